"""Warm starts (registry/warm_start.py): which champion a retrain may continue, that training starts from its
weights, and that the new lineage carries the continued adapter's rows. A real MLflow store and registry, the
builtin tiny model."""

import json

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from ft_pipeline.model.base_models import content_hash
from ft_pipeline.model.training import TrainOptions, build_trainer, train_adapter
from ft_pipeline.registry import versions as registry
from ft_pipeline.registry import warm_start
from ft_pipeline_tests.test_training import FAST, records

pytestmark = pytest.mark.slow

NAME = "warm"
ROWS = [{"drop": "d1.jsonl", "file": "d1.jsonl", "line": i, "raw_sha256": f"{i:064x}", "id": f"id{i}"}
        for i in range(1, 4)]


@pytest.fixture(scope="module")
def champion(tiny_base, tmp_path_factory):
    """A tiny LoRA adapter registered as the champion the way the lora_adapter and registered_model assets do:
    training params, lineage, the stage and base-hash tags."""
    tmp = tmp_path_factory.mktemp("warm")
    opts = TrainOptions(**FAST)
    train_adapter(tiny_base, records(), tmp / "ckpt", tmp / "adapter", opts, report_to_mlflow=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("t", (tmp / "art").as_uri()))
    base = {"source": "builtin", "path": str(tiny_base), "content_sha256": content_hash(tiny_base)}
    with mlflow.start_run() as run:
        mlflow.log_params({f"train.{k}": v for k, v in opts.to_params().items()})
        info = registry.log_adapter_model(tmp / "adapter", base)
        registry.log_lineage([{k: r[k] for k in ("drop", "line", "raw_sha256", "id")} for r in ROWS])
    registry.register(info.model_uri, NAME, run.info.run_id,
                      {"training.stage": "sft", "base_model_sha256": base["content_sha256"][:16]})
    registry.set_champion(NAME, "1")
    return tmp / "adapter", base["content_sha256"]


def test_the_champion_of_the_same_base_and_lora_shape_is_continued(champion, tmp_path):
    adapter, base_sha = champion
    (tmp_path / "warm" / "stale.txt").parent.mkdir()
    (tmp_path / "warm" / "stale.txt").write_text("a copy from an earlier run")
    warm, why = warm_start.from_champion(NAME, base_sha, TrainOptions(**FAST, warm_start_steps=2), {},
                                         dst=tmp_path / "warm")
    assert why == "warm start: continuing the champion (version 1) for 2 steps"
    assert warm.version == "1" and warm.rows == ROWS
    # the registered copy of the adapter, byte for byte, downloaded into the folder given, which held nothing else
    assert warm.adapter_sha256 == content_hash(adapter) == content_hash(warm.adapter_dir)
    assert (warm.adapter_dir.parent == tmp_path / "warm"
            and [p.name for p in (tmp_path / "warm").iterdir()] == ["adapter"])


@pytest.mark.parametrize("change, reason", [
    (dict(name="other"), "no warm start: no champion yet"),
    (dict(base_sha="f" * 64), "no warm start: the champion (version 1) was trained on another base model"),
    (dict(lora_r=8), "no warm start: the champion's (version 1) adapter differs in lora_r"),
    (dict(modules_to_save=[]), "no warm start: the champion's (version 1) adapter differs in modules_to_save"),
    (dict(erased={ROWS[1]["raw_sha256"]: "req-1"}),
     "no warm start: the champion (version 1) was trained on rows erased by req-1"),
])
def test_a_champion_that_cannot_be_continued_says_why(champion, change, reason, tmp_path):
    _, base_sha = champion
    name, base_sha = change.pop("name", NAME), change.pop("base_sha", base_sha)
    erased = change.pop("erased", {})
    warm, why = warm_start.from_champion(name, base_sha, TrainOptions(**{**FAST, **change}, warm_start_steps=2), erased,
                                         dst=tmp_path / "warm")
    assert warm is None and why.startswith(reason), why


def test_training_starts_from_the_adapters_weights_and_moves_on(champion, tiny_base, tmp_path):
    from peft import get_peft_model_state_dict

    adapter, _ = champion
    saved = load_file(adapter / "adapter_model.safetensors")
    trainer = build_trainer(tiny_base, records(), tmp_path / "ckpt", TrainOptions(**FAST), report_to_mlflow=False,
                            init_adapter=adapter)
    start = get_peft_model_state_dict(trainer.model)
    assert set(start) == set(saved) and all(torch.equal(start[k], saved[k]) for k in saved)
    assert any(p.requires_grad for n, p in trainer.model.named_parameters() if "lora_" in n)
    fresh = get_peft_model_state_dict(build_trainer(tiny_base, records(), tmp_path / "ckpt2", TrainOptions(**FAST),
                                                    report_to_mlflow=False).model)
    assert all(float(fresh[k].abs().sum()) == 0 for k in fresh if "lora_B" in k)  # a new adapter: B is zero
    res = train_adapter(tiny_base, records(), tmp_path / "ckpt3", tmp_path / "out",
                        TrainOptions(**{**FAST, "max_steps": 2}),
                        report_to_mlflow=False, init_adapter=adapter)
    after = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert res.global_step == 2 and set(after) == set(saved)
    assert any(not torch.equal(after[k], saved[k]) for k in saved if "lora_" in k)


def test_the_lineage_of_a_warm_start_holds_the_continued_rows_once(champion):
    own = [{"drop": "d2.jsonl", "line": 1, "raw_sha256": "a" * 64, "id": "x"},
           {k: ROWS[0][k] for k in ("drop", "line", "raw_sha256", "id")}]  # trained on again: listed once
    with mlflow.start_run() as run:
        registry.log_lineage(own, inherited=ROWS)
    text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/{registry.LINEAGE_ARTIFACT}")
    rows = [json.loads(x) for x in text.splitlines()]
    assert ([(r["drop"], r["line"]) for r in rows]
            == [("d2.jsonl", 1), ("d1.jsonl", 1), ("d1.jsonl", 2), ("d1.jsonl", 3)])
