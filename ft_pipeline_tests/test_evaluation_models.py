"""Evaluation and export on a briefly trained builtin tiny adapter (slow): the base evaluated through the
adapter's `disable_adapter()` is exactly the base model, and the merged export generates exactly what base +
adapter generates."""

import pytest
import torch

from ft_pipeline.evaluation.run import evaluate_all
from ft_pipeline.evaluation.scoring import evaluate, is_full_model, load_tokenizer, load_tuned, prompt_messages
from ft_pipeline.export.merged import merge_adapter
from ft_pipeline.model.base_models import load_model_and_tokenizer
from ft_pipeline.model.training import TrainOptions, train_adapter
from ft_pipeline_tests.test_training import FAST, records

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def adapter(tiny_base, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained")
    train_adapter(tiny_base, records(), tmp / "ckpt", tmp / "adapter", TrainOptions(**FAST), report_to_mlflow=False)
    return tmp / "adapter"


def holdout():
    return [{"messages": [{"role": "user", "content": f"where is my order ORD-{200000 + i}?"},
                          {"role": "assistant",
                           "content": f'{{"intent": "where_is_order", "order_id": "ORD-{200000 + i}"}}'}]}
            for i in range(6)]


def greedy_ids(model, tok, conversation, n=24):
    ids = tok.apply_chat_template(conversation, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[0, ids["input_ids"].shape[1]:]


def base_info(path) -> dict:
    from ft_pipeline.model.base_models import content_hash

    return {"path": str(path), "content_sha256": content_hash(path)}


def untimed(result: dict) -> dict:
    """An evaluation result without the wall-clock seconds its answers took (measured, so never the same twice)."""
    return {**result, "per_example": [{k: v for k, v in row.items() if k != "seconds"}
                                      for row in result["per_example"]]}


def test_base_under_disable_adapter_equals_a_separately_loaded_base(tiny_base, adapter, tmp_path):
    out = evaluate_all(base_info(tiny_base), adapter, holdout(), [], tmp_path, max_new_tokens=24)
    results = out["holdout"]
    base, tok = load_model_and_tokenizer(tiny_base)
    alone = evaluate(base, tok, holdout(), max_new_tokens=out["max_new_tokens"])
    assert untimed(results["base"]) == untimed(alone)  # every metric and every prediction, exactly
    # Not vacuous: the adapter (LoRA and the trained embed_tokens / lm_head copies) does change the model.
    assert results["tuned"]["metrics"]["holdout_loss"] != alone["metrics"]["holdout_loss"]


def test_retention_prompts_picks_how_many_general_prompts_the_check_uses(tiny_base, adapter, tmp_path):
    import json

    logged = []
    few = evaluate_all(base_info(tiny_base), adapter, holdout()[:2], [], tmp_path, max_new_tokens=8,
                       retention_prompts=4, log=lambda what, generated, total: logged.append((what, generated, total)))
    assert few["retention"]["prompts"] == 4 and len(few["retention"]["side_by_side"]) == 3
    # the terminal line counts the answers the tuned model generated (those shown beside the base's), not the
    # prompts its KL is scored on
    assert ("retention (tuned)", 3, 3) in logged
    assert few["retention"]["kl"]["tuned"] > 0
    base_cache = [p for p in (tmp_path / "retention").glob("*.json") if not p.name.startswith("kl-")]
    assert [len(json.loads(p.read_text())["answers"]) for p in base_cache] == [4]
    off = evaluate_all(base_info(tiny_base), adapter, holdout()[:2], [], tmp_path / "off", max_new_tokens=8,
                       retention_prompts=0)
    assert off["retention"] is None and not (tmp_path / "off" / "retention").exists()


def test_retention_kl_is_the_mean_over_answer_tokens_of_kl_base_to_tuned(tiny_base, adapter):
    from ft_pipeline.evaluation import retention

    model, tok = load_tuned(tiny_base, adapter)
    answers = ["Paris is the capital of France.", "4", "def f():\n    return 1"]  # prompts and answers of 3 lengths
    got = retention.mean_kl(model, tok, answers, batch_size=2)
    total = count = 0.0  # by hand: one conversation at a time, every position's logits
    for conv, answer in zip(retention.conversations(3), answers, strict=True):
        p = tok(tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True),
                add_special_tokens=False)["input_ids"]
        a = tok(answer, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p + a])
        with torch.inference_mode():
            tuned = torch.log_softmax(model(ids).logits[0].float(), -1)
            with model.disable_adapter():
                base = torch.log_softmax(model(ids).logits[0].float(), -1)
        total += float((base.exp() * (base - tuned)).sum(-1)[len(p) - 1:len(p) + len(a) - 1].sum())
        count += len(a)
    assert got > 0 and got == pytest.approx(total / count, rel=1e-4)


def test_merged_adapter_answers_as_the_unmerged_one_and_leaves_the_base_exactly_as_it_was(tiny_base, adapter):
    from ft_pipeline.evaluation.scoring import merged

    model, tok = load_tuned(tiny_base, adapter)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unmerged = evaluate(model, tok, holdout(), max_new_tokens=24)
    with merged(model):
        inside = evaluate(model, tok, holdout(), max_new_tokens=24)
        assert not torch.equal(model.state_dict()[next(k for k in before if "q_proj.base_layer" in k)],
                               before[next(k for k in before if "q_proj.base_layer" in k)])  # merged in
    assert [e["prediction"] for e in inside["per_example"]] == [e["prediction"] for e in unmerged["per_example"]]
    assert inside["metrics"]["holdout_loss"] == pytest.approx(unmerged["metrics"]["holdout_loss"], rel=1e-5)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_disable_adapter_routes_modules_to_save_to_the_original_weights(tiny_base, adapter):
    tuned, tok = load_tuned(tiny_base, adapter)
    base, _ = load_model_and_tokenizer(tiny_base)
    ids = tok.apply_chat_template(prompt_messages(holdout()[0]), add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    with torch.inference_mode():
        want = base(**ids).logits
        with tuned.disable_adapter():
            off = tuned(**ids).logits
        on = tuned(**ids).logits
    lm_head = tuned.base_model.model.lm_head
    assert not torch.equal(lm_head.modules_to_save["default"].weight, lm_head.original_module.weight)
    assert torch.equal(off, want)
    assert not torch.allclose(on, want)  # and the adapter is back on after the context


def test_merged_export_generates_token_for_token_like_base_plus_adapter(tiny_base, adapter, tmp_path):
    out = merge_adapter(tiny_base, adapter, tmp_path / "merged")
    assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()
    assert is_full_model(out) and (out / "export.json").exists()
    merged, mtok = load_model_and_tokenizer(out)  # plain transformers: no PEFT involved
    assert mtok.chat_template and mtok.chat_template == load_tokenizer(adapter).chat_template
    tuned, tok = load_tuned(tiny_base, adapter)
    base, _ = load_model_and_tokenizer(tiny_base)
    differs_from_base = 0
    for rec in holdout():
        conv = prompt_messages(rec)
        got, want = greedy_ids(merged, mtok, conv), greedy_ids(tuned, tok, conv)
        assert torch.equal(got, want), (mtok.decode(got), tok.decode(want))
        differs_from_base += not torch.equal(got, greedy_ids(base, tok, conv))
    assert differs_from_base > 0  # the merged weights are not just the base


def test_a_full_fine_tune_is_loaded_and_exported_as_it_is(tiny_base, tmp_path):
    # A full fine-tune leaves a whole model where an adapter would be: here, the tiny base itself.
    model, tok = load_tuned("/nonexistent-base-is-never-read", tiny_base)
    assert not hasattr(model, "peft_config")
    out = merge_adapter("/nonexistent-base-is-never-read", tiny_base, tmp_path / "merged")
    merged, mtok = load_model_and_tokenizer(out)
    conv = prompt_messages(holdout()[0])
    assert torch.equal(greedy_ids(merged, mtok, conv), greedy_ids(model, tok, conv))
    results = evaluate_all(base_info(tiny_base), tiny_base, holdout()[:2], [], tmp_path / "cache",
                           max_new_tokens=8)["holdout"]
    assert untimed(results["base"]) == untimed(results["tuned"])  # the "fine-tune" is the base itself, loaded twice


def test_prompting_baselines_run_with_the_base_model_on_a_seeded_subset_and_come_from_the_cache_after(
        tiny_base, adapter, tmp_path):
    from ft_pipeline.evaluation.baseline_run import BaselineSpec

    schema = {"type": "object", "properties": {"intent": {"type": "string"}, "order_id": {"type": "string"}},
              "required": ["intent", "order_id"], "additionalProperties": False}
    spec = BaselineSpec(records(), k=2, examples=4, schema=schema)
    fixed = [{"messages": [{"role": "user", "content": f"cancel ORD-{300000 + i} now"},
                           {"role": "assistant", "content": f'{{"intent": "cancel", "order_id": "ORD-{300000 + i}"}}'}]}
             for i in range(3)]
    logged = {}
    log = lambda what, generated, total: logged.__setitem__(what, generated)  # noqa: E731
    out = evaluate_all(base_info(tiny_base), adapter, holdout(), fixed, tmp_path, max_new_tokens=16,
                       retention_prompts=0, baselines=spec, log=log)
    b = out["baselines"]
    assert list(b["sets"]["holdout"]) == ["zero_shot", "few_shot_2", "dynamic_2", "zero_shot_schema",
                                          "few_shot_2_schema", "dynamic_2_schema"]
    assert len(b["subsets"]["holdout"]) == 4 and b["subsets"]["fixed"] == [0, 1, 2]
    for name, res in b["sets"]["holdout"].items():
        rows = res["per_example"]
        assert len(rows) == 4 and all(r["seconds"] > 0 and r["prompt_tokens"] > 0 for r in rows)
        if name.endswith("_schema"):  # constrained to the schema: every answer parses (or ran out of budget)
            assert all(r["json_valid"] or len(r["prediction"]) > 10 for r in rows)
    shots = b["sets"]["holdout"]["few_shot_2"]["per_example"][0]["prompt_tokens"]
    assert shots > b["sets"]["holdout"]["zero_shot"]["per_example"][0]["prompt_tokens"]
    assert logged["dynamic_2 (holdout)"] == 4 and logged["few_shot_2 (fixed)"] == 3
    # the base and tuned figures are what they are without baselines
    plain = evaluate_all(base_info(tiny_base), adapter, holdout(), fixed, tmp_path / "plain",
                         max_new_tokens=16, retention_prompts=0)
    for model in ("base", "tuned"):
        assert plain["holdout"][model]["metrics"] == out["holdout"][model]["metrics"]
    logged.clear()
    again = evaluate_all(base_info(tiny_base), adapter, holdout(), fixed, tmp_path, max_new_tokens=16,
                         retention_prompts=0, baselines=BaselineSpec(records(), k=2, examples=4, schema=schema),
                         log=log)
    assert all(n == 0 for what, n in logged.items() if what.split(" ")[0] in again["baselines"]["sets"]["holdout"])
    for set_name, done in b["sets"].items():
        for name, res in done.items():
            cached = again["baselines"]["sets"][set_name][name]
            assert cached["per_example"] == res["per_example"] and cached["generated"] == 0
