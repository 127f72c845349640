"""Constrained evaluation (evaluation/constrained.py): every model also answers under the split's output schema,
beside its free answers; an answer that ends before the token limit follows the schema, the cut ones are counted;
the answers are cached per model and schema; the gate judges the free answers unless gate_on says constrained."""

import json

import jsonschema
import pytest
from safetensors.torch import load_file, save_file

from ft_pipeline.evaluation import constrained as cons
from ft_pipeline.evaluation.run import evaluate_all
from ft_pipeline.model.base_models import load_model_and_tokenizer
from ft_pipeline_tests.test_evaluation_models import adapter, base_info, holdout  # noqa: F401 (adapter: a fixture)

SCHEMA = {"type": "object",
          "properties": {"intent": {"type": "string", "enum": ["where_is_order", "cancel"]},
                         "order_id": {"type": ["string", "null"]}},
          "required": ["intent", "order_id"], "additionalProperties": False,
          "x-guidance": {"item_separator": ", ", "key_separator": ": "}}
FIXED = [{"messages": [{"role": "user", "content": f"cancel ORD-{300000 + i} now"},
                       {"role": "assistant", "content": f'{{"intent": "cancel", "order_id": "ORD-{300000 + i}"}}'}]}
         for i in range(3)]


def _run(tiny_base, adapter_dir, cache, schema=SCHEMA, max_new_tokens=64, examples=0, log=None):
    return evaluate_all(base_info(tiny_base), adapter_dir, holdout(), FIXED, cache, max_new_tokens=max_new_tokens,
                        retention_prompts=0, constrained=cons.ConstrainedSpec(schema, "test", examples),
                        log=log or (lambda what, generated, total: None))


@pytest.mark.slow
def test_constrained_answers_that_end_before_the_limit_follow_the_schema_and_cut_ones_are_counted(
        tiny_base, adapter, tmp_path):  # noqa: F811
    out = _run(tiny_base, adapter, tmp_path)
    finished = 0
    for set_name, n in (("holdout", 6), ("fixed", 3)):
        assert set(out["constrained"][set_name]) == {"base", "tuned"}
        for name, res in out["constrained"][set_name].items():
            rows = res["per_example"]
            assert len(rows) == n and res["cut"] == sum(not r["finished"] for r in rows)
            for r in rows:
                if r["finished"]:  # schema-valid by construction, written with the schema's separators
                    jsonschema.validate(json.loads(r["prediction"]), SCHEMA)
                    assert json.dumps(json.loads(r["prediction"])) == r["prediction"]
                    finished += 1
            # free, the random tiny model writes bytes, not JSON: the constraint is what makes the answers valid
            assert out[set_name][name]["metrics"]["json_valid"] == 0.0
    assert finished >= 6
    # a limit too short for any whole answer: every one is cut, and counted
    spec = cons.ConstrainedSpec(SCHEMA, "test")
    model, tok = load_model_and_tokenizer(tiny_base)
    short = cons.evaluate(spec, model, tok, {"holdout": holdout(), "fixed": FIXED}, None, None, 8, 64,
                          cons.grammars_for(spec))
    assert short["holdout"]["cut"] == 6 and short["fixed"]["cut"] == 3
    entry = cons.report({**out, "constrained": {s: {"base": r} for s, r in short.items()}}, holdout(), FIXED, spec)
    assert entry["sets"]["holdout"]["models"]["base"]["cut"] == 6
    # the free side's cut answers are counted too: the tiny model writes bytes until the limit
    assert entry["sets"]["fixed"]["models"]["base"]["free_cut"] == sum(
        not r["finished"] for r in out["fixed"]["base"]["per_example"]) > 0


@pytest.mark.slow
def test_constrained_answers_are_cached_per_model_and_schema(tiny_base, adapter, tmp_path):  # noqa: F811
    logged = {}
    log = lambda what, generated, total: logged.__setitem__(what, generated)  # noqa: E731
    first = _run(tiny_base, adapter, tmp_path, examples=4, log=log)
    assert logged["base (holdout, constrained)"] == 4 and logged["tuned (fixed, constrained)"] == 3
    assert [len(r["per_example"]) for r in first["constrained"]["holdout"].values()] == [4, 4]
    logged.clear()
    again = _run(tiny_base, adapter, tmp_path, examples=4, log=log)
    assert logged and all(n == 0 for n in logged.values())
    assert again["constrained"]["holdout"]["tuned"]["per_example"] == first["constrained"]["holdout"]["tuned"][
        "per_example"]
    # a retrain (another adapter on the same base): only the new adapter answers again
    retrained = tmp_path / "retrained"
    retrained.mkdir()
    for f in adapter.iterdir():
        (retrained / f.name).write_bytes(f.read_bytes())
    weights = load_file(adapter / "adapter_model.safetensors")
    save_file({k: v * 1.5 if "lora_B" in k else v for k, v in weights.items()},
              str(retrained / "adapter_model.safetensors"))
    logged.clear()
    _run(tiny_base, retrained, tmp_path, examples=4, log=log)
    assert logged["base (holdout, constrained)"] == 0 and logged["base (fixed, constrained)"] == 0
    assert logged["tuned (holdout, constrained)"] == 4 and logged["tuned (fixed, constrained)"] == 3
    # another schema: generated again
    logged.clear()
    other = {**SCHEMA, "properties": {**SCHEMA["properties"], "intent": {"type": "string", "enum": ["cancel"]}}}
    _run(tiny_base, adapter, tmp_path, schema=other, examples=4, log=log)
    assert logged["base (holdout, constrained)"] == 4


def _side(free_fa: float, constrained_fa: float) -> dict:
    m = lambda fa: dict(json_valid=1.0, field_accuracy=fa, exact_match=fa, chrf=50.0, rouge_l=fa)  # noqa: E731
    return {"free": m(free_fa), "constrained": m(constrained_fa), "cut": 0, "free_cut": 0}


def _gate(tmp_path, gate_on: str, report_gate_on: str = "free", constrained: bool = True):
    from ft_pipeline.defs.evaluation import GateConfig, beats_base_and_champion
    from ft_pipeline.resources import PipelineHome

    m = lambda fa: dict(json_valid=1.0, field_accuracy=fa, exact_match=fa, chrf=50.0, rouge_l=fa)  # noqa: E731
    # free, the tuned model beats the base; constrained, the base catches up (it could only not spell the JSON)
    entry = ({"note": "test", "sets": {"holdout": {"n": 4, "models": {"base": _side(0.1, 0.8),
                                                                     "tuned": _side(0.9, 0.82)}}}}
             if constrained else {"note": "the split has no output schema (output_schema: off)", "sets": {}})
    report = {"metrics": {"base": m(0.1), "tuned": m(0.9)}, "champion_version": None, "retention_kl": None,
              "constrained": entry, "gate_on": report_gate_on}
    (tmp_path / "reports").mkdir(exist_ok=True)
    (tmp_path / "reports" / "evaluation.json").write_text(json.dumps(report))
    config = GateConfig(gate_on=gate_on, min_gain_over_base=0.05, max_retention_kl=None)
    import dagster as dg

    home = PipelineHome(home=str(tmp_path), raw_dir=str(tmp_path))
    return beats_base_and_champion(dg.build_asset_check_context(), config=config, home=home)


def test_the_gate_judges_the_free_answers_unless_gate_on_says_constrained(tmp_path):
    assert _gate(tmp_path, "free").passed
    judged = _gate(tmp_path, "constrained", "constrained")
    assert not judged.passed and "field accuracy 0.820 does not beat the base model's 0.800" in judged.description
    assert judged.metadata["gate_on"].value == "constrained"
    stale = _gate(tmp_path, "constrained", "free")
    assert not stale.passed and "re-materialize evaluation_report" in stale.description
    none = _gate(tmp_path, "constrained", "constrained", constrained=False)
    assert not none.passed and "no constrained answers: the split has no output schema" in none.description


def test_without_a_split_schema_the_report_says_why_in_one_line(tmp_path):
    from ft_pipeline.data.output_schema import split_schema

    (tmp_path / "manifest.json").write_text(json.dumps({"train_sha256": "ab" * 32, "output_schema": {
        "source": "off", "why_none": "output_schema: off", "sha256": None}}))
    schema, why = split_schema(tmp_path, "ab" * 32)
    assert schema is None and why == "the split has no output schema (output_schema: off)"
    assert split_schema(tmp_path, "cd" * 32) == (None, "the split changed since training")
    entry = cons.report({"holdout": {}, "fixed": {}, "constrained": {}}, [], [], cons.ConstrainedSpec(None, why))
    assert entry["sets"] == {}
    lines = [line for line in cons.markdown(entry) if line and not line.startswith("#")]
    assert lines == ["No constrained answers: the split has no output schema (output_schema: off)."]
    assert cons.flat_metrics(entry) == {}


def test_the_report_shows_free_and_constrained_side_by_side():
    entry = {"note": "Schema: test", "sets": {"holdout": {"n": 4, "models": {"base": _side(0.1, 0.8)}},
                                              "fixed": {"n": 3, "models": {"base": _side(0.2, 0.7)}}}}
    md = "\n".join(cons.markdown(entry, "support_handwritten.jsonl"))
    assert "| holdout | 4 | base | 1.000 | 1.000 | 0.100 | 0.800 | 0.100 | 0.800 | 0 | 0 |" in md
    assert "| support_handwritten.jsonl | 3 | base |" in md
    flat = cons.flat_metrics(entry)
    assert flat["constrained.base.field_accuracy"] == 0.8 and flat["fixed.constrained.base.field_accuracy"] == 0.7
    assert flat["constrained.base.cut"] == 0.0
    assert cons.flat_metrics(entry, "_")["constrained_base_json_valid"] == 1.0
