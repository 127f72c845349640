"""DPO on builtin:tiny: the reference is the SFT model (checked against log-probabilities computed here by hand),
reward margins rise, the base and the SFT adapter are left as they were, only the trained adapter is saved, and a
killed run resumes from its checkpoint. Plus the choice of the model that goes to the gate."""

import json
import subprocess
import sys

import pytest

from ft_pipeline.evaluation.scoring import pick_candidate
from ft_pipeline.knobs import KnobError
from ft_pipeline.model.base_models import content_hash
from ft_pipeline.preference.training import PreferenceOptions
from ft_pipeline_tests.test_evaluation_models import untimed


def _user(i):
    return f"refund order ORD-{100000 + i} please"


def _answer(intent, i):
    return json.dumps({"intent": intent, "order_id": f"ORD-{100000 + i}"})


def sft_records(n=24):
    return [{"messages": [{"role": "user", "content": _user(i)},
                          {"role": "assistant", "content": _answer("refund", i)}]}
            for i in range(n)]


def pairs(n=32):
    return [{"prompt": [{"role": "user", "content": _user(i)}],
             "chosen": [{"role": "assistant", "content": _answer("refund", i)}],
             "rejected": [{"role": "assistant", "content": _answer("cancel_order", i)}]} for i in range(n)]


FAST = dict(max_steps=6, per_device_train_batch_size=8, logging_steps=1, save_steps=3)


@pytest.fixture(scope="module")
def sft_adapter(tiny_base, tmp_path_factory):
    from ft_pipeline.model.training import TrainOptions, train_adapter

    out = tmp_path_factory.mktemp("sft") / "adapter"
    train_adapter(tiny_base, sft_records(), out.parent / "ckpt", out,
                  TrainOptions(max_steps=10, per_device_train_batch_size=8, warmup_steps=0), report_to_mlflow=False)
    return out


@pytest.mark.slow
def test_the_reference_is_the_sft_model_not_the_base(tiny_base, sft_adapter, tmp_path):
    from ft_pipeline.evaluation import pair_scoring as scoring
    from ft_pipeline.preference.training import build_trainer, load_policy

    trainer = build_trainer(tiny_base, sft_adapter, pairs(), tmp_path / "ckpt", PreferenceOptions(**FAST),
                            report_to_mlflow=False)
    ds = trainer.train_dataset  # precompute_ref_log_probs: TRL's reference log-probabilities, per pair
    trl_ref = list(zip(ds["ref_chosen_logps"], ds["ref_rejected_logps"]))
    model, tok = load_policy(tiny_base, sft_adapter)
    by_hand_sft = scoring.pair_logps(model, tok, pairs())
    with model.disable_adapter():
        by_hand_base = scoring.pair_logps(model, tok, pairs())
    flat = lambda logps: [x for pair in logps for x in pair]  # noqa: E731
    assert flat(trl_ref) == pytest.approx(flat(by_hand_sft), abs=1e-3)
    # The base gives clearly different numbers, so the comparison above tells the two references apart.
    assert min(abs(a[0] - b[0]) for a, b in zip(trl_ref, by_hand_base)) > 1.0


@pytest.mark.slow
def test_dpo_raises_margins_and_leaves_base_and_sft_adapter_alone(tiny_base, sft_adapter, tmp_path):
    from safetensors.torch import load_file

    from ft_pipeline.preference.training import train_preference

    base_before, sft_before = content_hash(tiny_base), content_hash(sft_adapter)
    res = train_preference(tiny_base, sft_adapter, pairs(), tmp_path / "ckpt", tmp_path / "dpo",
                           PreferenceOptions(**FAST), report_to_mlflow=False)
    margins = [h["rewards/margins"] for h in res.log_history if "rewards/margins" in h]
    assert len(margins) == FAST["max_steps"] and margins[0] == pytest.approx(0.0, abs=1e-6)  # policy == reference
    assert margins[-1] > 1.0 and res.last("rewards/accuracies") == 1.0
    assert content_hash(tiny_base) == base_before and content_hash(sft_adapter) == sft_before
    out = tmp_path / "dpo"
    assert not (out / "ref").exists()  # TRL's frozen reference copy is not part of the model
    tuned, sft = load_file(out / "adapter_model.safetensors"), load_file(sft_adapter / "adapter_model.safetensors")
    assert set(tuned) == set(sft) and any(not tuned[k].equal(sft[k]) for k in tuned)
    assert (out / "tokenizer_config.json").exists() and not (tmp_path / "ckpt").exists()


@pytest.mark.slow
def test_the_dpo_adapter_evaluated_beside_sft_answers_as_if_loaded_alone(tiny_base, sft_adapter, tmp_path):
    from ft_pipeline.evaluation.run import evaluate_all
    from ft_pipeline.evaluation.scoring import evaluate, load_tuned, merged
    from ft_pipeline.preference.training import train_preference

    train_preference(tiny_base, sft_adapter, pairs(), tmp_path / "ckpt", tmp_path / "dpo",
                     PreferenceOptions(**FAST), report_to_mlflow=False)
    holdout = [{"messages": p["prompt"] + p["chosen"]} for p in pairs(40)[32:]]
    base = {"path": str(tiny_base), "content_sha256": content_hash(tiny_base)}
    both = evaluate_all(base, sft_adapter, holdout, [], tmp_path / "cache", max_new_tokens=16,
                        more={"dpo": tmp_path / "dpo"}, pairs=pairs(40)[32:])
    budget = both["max_new_tokens"]
    for name, adapter in (("tuned", sft_adapter), ("dpo", tmp_path / "dpo")):
        model, tok = load_tuned(tiny_base, adapter)
        with merged(model):  # as the evaluation answers with an adapter: merged into the base weights
            alone = evaluate(model, tok, holdout, budget)
        assert untimed(both["holdout"][name]) == untimed(alone), name  # every metric and prediction, exactly
    # Not vacuous: the two adapters answer differently, and the SFT adapter is active again for the KL
    assert both["holdout"]["dpo"]["metrics"]["holdout_loss"] != both["holdout"]["tuned"]["metrics"]["holdout_loss"]
    assert set(both["retention"]["kl"]) == {"tuned", "dpo"} and both["retention"]["kl"]["tuned"] != both[
        "retention"]["kl"]["dpo"]
    assert set(both["pair_accuracy"]) == {"base", "tuned", "dpo"}


KILL_AT_STEP_4 = """
import json, os, signal, sys
from pathlib import Path
from ft_pipeline.preference.training import PreferenceOptions, train_preference
base, sft, tmp, pairs, opts = (sys.argv[1], sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4]),
                               json.loads(sys.argv[5]))
def die(logs):
    if logs["step"] == 4:
        os.kill(os.getpid(), signal.SIGKILL)
train_preference(Path(base), Path(sft), pairs, tmp / "ckpt", tmp / "dpo", PreferenceOptions(**opts),
                 report_to_mlflow=False, on_log=die)
"""


@pytest.mark.slow
def test_killed_dpo_resumes_from_its_last_checkpoint(tiny_base, sft_adapter, tmp_path):
    from ft_pipeline.preference.training import train_preference

    proc = subprocess.run([sys.executable, "-c", KILL_AT_STEP_4, str(tiny_base), str(sft_adapter), str(tmp_path),
                           json.dumps(pairs()), json.dumps(FAST)], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("checkpoint-*")) == ["checkpoint-3"]
    res = train_preference(tiny_base, sft_adapter, pairs(), tmp_path / "ckpt", tmp_path / "dpo",
                           PreferenceOptions(**FAST), report_to_mlflow=False)
    assert res.resumed_from.endswith("checkpoint-3") and res.global_step == FAST["max_steps"]
    assert (tmp_path / "dpo" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("bad, message", [
    (dict(loss_type="sigmoidd"), "loss_type: must be one of sigmoid, hinge"),
    (dict(beta=0), "beta: must be > 0"),
    (dict(max_steps=0), "max_steps: must be >= 1"),
    (dict(label_smoothing=0.5), "label_smoothing: must be >= 0 and < 0.5"),
])
def test_bad_preference_knobs_fail_with_their_name(bad, message):
    with pytest.raises(KnobError, match=message):
        PreferenceOptions(**bad)


M = lambda v: {"field_accuracy": v}  # noqa: E731


@pytest.mark.parametrize("metrics, compare_champion, expected", [
    ({"base": M(0.1), "tuned": M(0.8)}, True, "tuned"),  # no DPO model
    ({"base": M(0.1), "tuned": M(0.8), "dpo": M(0.9)}, True, "dpo"),  # no champion: beats SFT
    ({"base": M(0.1), "tuned": M(0.8), "dpo": M(0.8)}, True, "tuned"),  # a tie is not a win
    ({"base": M(0.1), "tuned": M(0.8), "dpo": M(0.9), "champion": M(0.95)}, True, "tuned"),
    ({"base": M(0.1), "tuned": M(0.8), "dpo": M(0.9), "champion": M(0.85)}, True, "dpo"),
    ({"base": M(0.1), "tuned": M(0.8), "dpo": M(0.9), "champion": M(0.95)}, False, "dpo"),  # erased champion
])
def test_dpo_goes_to_the_gate_only_if_it_beats_sft_and_champion(metrics, compare_champion, expected):
    pick, why = pick_candidate(metrics, "field_accuracy", compare_champion)
    assert pick == expected and why


def test_sft_weight_adds_trl_sft_loss_with_its_weight(tmp_path):
    from ft_pipeline.preference.training import dpo_config

    plain = dpo_config(PreferenceOptions(), tmp_path, "dpo", report_to_mlflow=False)
    assert plain.loss_type == ["sigmoid"] and plain.loss_weights is None
    rpo = dpo_config(PreferenceOptions(loss_type="ipo", sft_weight=0.5), tmp_path, "dpo", report_to_mlflow=False)
    assert rpo.loss_type == ["ipo", "sft"] and rpo.loss_weights == [1.0, 0.5]
    assert not rpo.gradient_checkpointing and not rpo.bf16  # TRL's GPU-minded defaults follow the machine
