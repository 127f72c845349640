"""Constrained evaluation: each model's holdout and hand-written-set answers decoded under the split's output schema
(the one its registered version carries), with the separators the server uses (the schema's `x-guidance`), beside
its free answers. An answer that ends before the token limit is schema-valid by construction; one the limit cut is
counted. Answers are cached per model like the free ones (evaluation/cache.py), under a key that also holds the
schema, so a retrain generates only for the new adapter, and a new schema generates again."""

from __future__ import annotations

from dataclasses import dataclass

from ft_pipeline.evaluation import baselines as bl
from ft_pipeline.evaluation import cache as eval_cache
from ft_pipeline.evaluation import scoring

# What the report shows side by side, free and constrained
SHOWN = ("json_valid", "field_accuracy", "exact_match")
KEPT = ("json_valid",) + scoring.GATE_METRICS  # what the report keeps, for a gate on any of its metrics
GATE_ON = ("free", "constrained")


@dataclass
class ConstrainedSpec:
    """The schema to decode under (None: no constrained side, and `note` says why), on a seeded subset of
    `examples` of each set (0: all; the same subset as the prompting baselines' at the same size and seed)."""

    schema: dict | None
    note: str = ""
    examples: int = 0
    seed: int = 0

    def response_format(self):
        from ft_pipeline.structured.formats import parse_response_format

        return parse_response_format({"type": "json_schema",
                                      "json_schema": {"name": "output", "schema": self.schema, "strict": True}})

    def separators(self) -> dict:
        """The schema's x-guidance separators, given to the grammars as the server gives them (serving/models.py)."""
        seps = self.schema.get("x-guidance") or {}
        return {k: seps[k] for k in ("item_separator", "key_separator") if k in seps}


def grammars_for(spec: ConstrainedSpec):
    """A `grammars(model, tok)` for scoring.evaluate: one structured.grammar.Grammars per tokenizer, built once."""
    built: dict[int, tuple] = {}  # id -> (the tokenizer, kept so that its id is not reused; its Grammars)

    def grammars(model, tok):
        if id(tok) not in built:
            from ft_pipeline.structured.grammar import Grammars

            built[id(tok)] = (tok, Grammars(tok, vocab_size=model.config.vocab_size, separators=spec.separators()))
        return built[id(tok)][1]

    return grammars


def cache_key(model_key: str | None, fmt) -> str | None:
    """The cache name of a model's constrained answers: the model's and the response format's (schema) keys."""
    return eval_cache.model_key(model_key, "constrained", fmt.key) if model_key else None


def evaluate(spec: ConstrainedSpec, model, tok, sets: dict[str, list[dict]], key: str | None, cache_dir, budget: int,
             batch_size: int, grammars, progress=lambda what, done, total: None) -> dict[str, dict]:
    """{set: result} of one model's constrained answers on each set's subset (scoring.evaluate's result, plus
    `cut`: the answers the token limit cut). `model` may be a loader, as for scoring.evaluate."""
    fmt = spec.response_format()
    cache = eval_cache.EvalCache(cache_dir, cache_key(key, fmt))
    out = {}
    for set_name, records in sets.items():
        chosen = [records[i] for i in bl.subset(records, spec.examples, spec.seed)]
        if not chosen:
            continue
        res = scoring.evaluate(model, tok, chosen, budget, batch_size, cache=cache, response_format=fmt,
                               grammars=grammars,
                               progress=lambda done, total, s=set_name: progress(s, done, total))
        res["cut"] = sum(not row["finished"] for row in res["per_example"])
        out[set_name] = res
    return out


def side_by_side(free: dict[str, dict], constrained: dict[str, dict], records: list[dict], spec: ConstrainedSpec
                 ) -> dict:
    """One set's figures for the report: n, and per model its free metrics on the constrained side's examples,
    its constrained metrics and how many constrained answers the limit cut (and how many free ones)."""
    idx = bl.subset(records, spec.examples, spec.seed)
    rows = {}
    for name, res in constrained.items():
        free_rows = [free[name]["per_example"][i] for i in idx]
        on_subset = scoring.score([r["prediction"] for r in free_rows], [r["reference"] for r in free_rows])
        rows[name] = {"free": {k: on_subset.metrics()[k] for k in KEPT},
                      "constrained": {k: res["metrics"][k] for k in KEPT},
                      "cut": res["cut"], "free_cut": sum(not r.get("finished", True) for r in free_rows)}
    return {"n": len(idx), "models": rows}


def report(out: dict, holdout: list[dict], fixed: list[dict], spec: ConstrainedSpec | None) -> dict:
    """The report's `constrained` entry: `note` (why there is none, or the schema's one line) and, with a schema,
    per set (holdout, fixed) the side_by_side figures."""
    if spec is None or spec.schema is None:
        return {"note": (spec.note if spec else "") or "no output schema", "sets": {}}
    sets = {}
    for set_name, records in (("holdout", holdout), ("fixed", fixed)):
        done = out["constrained"].get(set_name) or {}
        if done:
            sets[set_name] = side_by_side(out[set_name], done, records, spec)
    return {"note": spec.note, "examples": spec.examples, "sets": sets}


def gate_metrics(report_: dict, gate_on: str) -> dict[str, dict] | None:
    """{model: metrics} of the holdout answers the gate judges: the report's free metrics, or its constrained
    ones (None when the report has none)."""
    if gate_on == "free":
        return report_["metrics"]
    sets = ((report_.get("constrained") or {}).get("sets") or {})
    holdout = sets.get("holdout")
    return {n: r["constrained"] for n, r in holdout["models"].items()} if holdout else None


def markdown(entry: dict | None, fixed_name: str = "hand-written set") -> list[str]:
    if entry is None:
        return []
    lines = ["", "### Free and constrained (decoded under the output schema)", ""]
    if not entry["sets"]:
        return lines + [f"No constrained answers: {entry['note']}."]
    lines += ["Each model's answers decoded under the split's output schema (the one registered with the model), "
              "beside its free answers on the same examples. A constrained answer that ends before the token limit "
              f"follows the schema by construction; **cut** counts those the limit cut. {entry['note']}.", "",
              "| set | n | model | " + " | ".join(f"{k} free | {k} constrained" for k in SHOWN)
              + " | cut free | cut constrained |", "|---" * (5 + 2 * len(SHOWN)) + "|"]
    for set_name, s in entry["sets"].items():
        label = "holdout" if set_name == "holdout" else fixed_name
        for name, r in s["models"].items():
            lines.append(f"| {label} | {s['n']} | {name} | "
                         + " | ".join(f"{r['free'][k]:.3f} | {r['constrained'][k]:.3f}" for k in SHOWN)
                         + f" | {r['free_cut']} | {r['cut']} |")
    return lines


def flat_metrics(entry: dict | None, sep: str = ".") -> dict[str, float]:
    """`constrained.<model>.<metric>` (holdout), `fixed.constrained.<model>.<metric>`, and `.cut`, as numbers, for
    MLflow (sep ".") and the Dagster metadata (sep "_")."""
    out = {}
    for set_name, s in ((entry or {}).get("sets") or {}).items():
        prefix = "constrained" if set_name == "holdout" else f"{set_name}{sep}constrained"
        for name, r in s["models"].items():
            out.update({f"{prefix}{sep}{name}{sep}{k}": float(v) for k, v in r["constrained"].items()})
            out[f"{prefix}{sep}{name}{sep}cut"] = float(r["cut"])
    return out
