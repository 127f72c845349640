"""The lora_adapter asset on a prepared home (tiny base, a small split): secrets never reach MLflow or Dagster,
the asset trains through torchrun and through accelerate launch with two CPU processes (gloo), streaming logs and
metrics back, and an FSDP accelerate config on CPU (which accelerate 1.15 would silently run as DDP) fails clearly."""

import json

import dagster as dg
import pytest

from ft_pipeline.defs.model import lora_adapter
from ft_pipeline.resources import MlflowTracking, PipelineHome
from ft_pipeline_tests.test_training import records

pytestmark = pytest.mark.slow

SECRET = "hf_THIS_IS_A_TEST_TOKEN_1234567890abcdef"


@pytest.fixture
def home(tiny_base, tmp_path):
    from ft_pipeline.jsonl import write_jsonl
    from ft_pipeline.model.base_models import content_hash

    h = PipelineHome(home=str(tmp_path / "home"), raw_dir=str(tmp_path / "raw"))
    h.models_dir.mkdir(parents=True, exist_ok=True)
    h.base_info.write_text(json.dumps({"spec": "builtin:tiny", "path": str(tiny_base), "source": "builtin",
                                       "revision": None, "content_sha256": content_hash(tiny_base)}))
    recs = [{**r, "drop": "d.jsonl", "line": i + 1, "raw_sha256": f"{i:064x}", "id": f"id{i}"}
            for i, r in enumerate(records(32))]
    write_jsonl(h.split_dir / "train.jsonl", recs[:24])
    write_jsonl(h.split_dir / "holdout.jsonl", recs[24:])
    (h.split_dir / "manifest.json").write_text(json.dumps({"train_sha256": "a" * 64, "holdout_sha256": "b" * 64,
                                                           "drops": {"d.jsonl": "c" * 16}}))
    return h


def materialize(home, tmp_path, raise_on_error=True, **config):
    mlflow_res = MlflowTracking(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "art"))
    cfg = dict(max_steps=4, per_device_train_batch_size=4, logging_steps=1, save_steps=2, warmup_steps=0) | config
    instance = dg.DagsterInstance.ephemeral()
    res = dg.materialize([lora_adapter], resources={"home": home, "mlflow_tracking": mlflow_res},
                         run_config=dg.RunConfig(ops={"lora_adapter": {"config": cfg}}), instance=instance,
                         raise_on_error=raise_on_error)
    return res, [e.user_message for e in instance.all_logs(res.run_id)]


def mlflow_run(tmp_path, run_id):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    return mlflow.MlflowClient().get_run(run_id)


def test_tokens_never_reach_mlflow_or_dagster_metadata(home, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", SECRET)
    res, messages = materialize(home, tmp_path)
    assert res.success
    md = res.asset_materializations_for_node("lora_adapter")[0].metadata
    run = mlflow_run(tmp_path, json.loads(home.adapter_info.read_text())["training_run_id"])
    assert "learning_rate" in run.data.params and "train.learning_rate" in run.data.params  # TRL's and ours
    assert run.data.params.get("hub_token") in (None, "<HUB_TOKEN>")
    assert run.data.params["train.trust_remote_code"] == "False"
    texts = [*run.data.params.items(), *run.data.tags.items(), *((k, str(v.value)) for k, v in md.items()), *messages]
    assert texts and not [kv for kv in texts if SECRET in str(kv)]
    assert SECRET not in home.adapter_info.read_text()


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_asset_trains_under_a_launcher_with_two_cpu_processes(home, tmp_path, launcher):
    res, messages = materialize(home, tmp_path, launcher=launcher, num_processes=2)
    assert res.success
    md = res.asset_materializations_for_node("lora_adapter")[0].metadata
    # world_size is what the launcher told the training processes (WORLD_SIZE): 2 means two ranks really ran.
    assert md["launcher"].value == launcher and md["world_size"].value == 2 and md["global_step"].value == 4
    assert (home.adapter_dir / "adapter_model.safetensors").exists()
    info = json.loads(home.adapter_info.read_text())
    run = mlflow_run(tmp_path, info["training_run_id"])
    # Rank 0 logged its step metrics into the asset's own MLflow run (one value per logging step).
    import mlflow

    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    assert any(m.startswith("step 4/4 loss=") for m in messages)  # rank 0's step logs, streamed back


def test_fsdp_on_cpu_fails_clearly_instead_of_silently_training_ddp(home, tmp_path):
    """accelerate 1.15 enables FSDP only on GPU-like devices: with use_cpu it runs the processes as MULTI_CPU DDP
    and ignores the FSDP config. The asset must say so, not train unsharded under an FSDP label."""
    import yaml

    from ft_pipeline.settings import REPO_ROOT

    cfg = yaml.safe_load((REPO_ROOT / "configs" / "accelerate" / "fsdp.yaml").read_text())
    cfg.update(use_cpu=True, mixed_precision="no")  # the repo's FSDP config (fsdp_config unchanged), for a CPU
    assert cfg["distributed_type"] == "FSDP" and cfg["fsdp_config"]["fsdp_version"] == 2
    config_file = tmp_path / "fsdp_cpu.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    res, _ = materialize(home, tmp_path, raise_on_error=False, launcher="accelerate", num_processes=2,
                         accelerate_config=str(config_file))  # absolute: repo_root / it is the path itself
    assert not res.success
    [failure] = [e for e in res.all_events if e.is_step_failure]
    error, texts = failure.step_failure_data.error, []
    while error is not None:  # Dagster's step error, caused by train_in_child's RuntimeError
        texts.append(error.message)
        error = error.cause
    text = "\n".join(texts)
    # The child's own error leads the message, even where torchrun's failure report fills the output's tail.
    assert "exited with 1: ft_pipeline.model.training.FsdpUnavailableError: the accelerate config asks for FSDP" in text
    assert "DistributedType.MULTI_CPU on cpu" in text
    assert not (home.adapter_dir / "adapter_model.safetensors").exists()
