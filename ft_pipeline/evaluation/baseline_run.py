"""Evaluating the prompting baselines (evaluation/baselines.py) with the base model, on a fixed, seeded subset of
the holdout and of the hand-written set, each answer cached (evaluation/cache.py) under the base model's content
hash and the baseline's definition (instruction, k, kind, schema), each example under its exact prompt (shots
included): a retrain with the same base, instruction and training examples generates nothing."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ft_pipeline.evaluation import baselines as bl
from ft_pipeline.evaluation import cache as eval_cache
from ft_pipeline.evaluation import scoring


@dataclass
class BaselineSpec:
    """What a run evaluates: `kinds` of baselines (baselines.KINDS), k shots, on `examples` of each set (0: all),
    with `instruction` ("" = baselines.default_instruction of `train`), under `schema` (a JSON Schema) too when
    one is given."""

    train: list[dict]
    kinds: tuple[str, ...] = bl.KINDS
    k: int = 5
    examples: int = 0
    instruction: str = ""
    schema: dict | None = None
    schema_note: str = ""  # why there is no schema variant, for the report
    seed: int = 0
    definitions: list[bl.Baseline] = field(init=False)

    def __post_init__(self):
        if unknown := [k for k in self.kinds if k not in bl.KINDS]:
            raise ValueError(f"baseline_kinds: {', '.join(map(repr, unknown))} not among {', '.join(bl.KINDS)}")
        self.instruction = self.instruction or bl.default_instruction(self.train)
        self.definitions = bl.definitions(self.kinds, self.k, self.schema is not None)


def load_schema(path: Path | None) -> tuple[dict | None, str]:
    """(the JSON Schema in `path`, or None; a line for the report saying where it came from or why there is none).
    The file holds a JSON Schema, or an OpenAI response_format object of type json_schema."""
    if path is None:
        return None, ("the split wrote no output schema and none is configured (`output_schema`), so the "
                      "baselines are not also run under one (constrained decoding)")
    raw = json.loads(Path(path).read_text())
    if isinstance(raw, dict) and raw.get("type") == "json_schema":
        raw = raw["json_schema"]["schema"]
    return raw, f"output schema: {Path(path).name}"


def response_format(schema: dict | None):
    from ft_pipeline.structured.formats import parse_response_format

    if schema is None:
        return None
    return parse_response_format({"type": "json_schema", "json_schema": {"name": "output", "schema": schema}})


def run_baselines(model, tok, spec: BaselineSpec, sets: dict[str, list[dict]], base_sha256: str, cache_dir: Path,
                  max_new_tokens: int, batch_size: int,
                  log: Callable[[str, int, int], None] = lambda what, generated, total: None,
                  progress: Callable[[str, int, int], None] = lambda what, done, total: None) -> dict:
    """{"sets": {set: {baseline: result}}, "subsets": {set: indices}, "instruction", "k", "schema_note",
    "keys": {baseline: cache key}, "skipped": {baseline: why}}: every baseline on the same seeded subset of each
    set. `model` is the base model (or a loader returning (model, tokenizer)). A baseline whose longest prompt
    and answer would not fit the model's context (`tok.model_max_length`, when known) is skipped."""
    fmt = response_format(spec.schema)
    grammars_ = []

    def grammars(m, t):
        if not grammars_:
            from ft_pipeline.structured.grammar import Grammars

            grammars_.append(Grammars(t, vocab_size=m.config.vocab_size))
        return grammars_[0]

    subsets = {name: bl.subset(records, spec.examples, spec.seed) for name, records in sets.items()}
    out = {"sets": {name: {} for name in sets}, "subsets": subsets, "instruction": spec.instruction, "k": spec.k,
           "schema_note": spec.schema_note, "keys": {},
           "skipped": {}}
    for b in spec.definitions:
        key = out["keys"][b.name] = eval_cache.model_key(
            base_sha256, "baseline", bl.definition_key(b, spec.instruction, fmt.key if fmt else ""))
        cache = eval_cache.EvalCache(cache_dir, key)
        for name, records in sets.items():
            chosen = [records[i] for i in subsets[name]]
            if not chosen:
                continue
            what = f"{b.name} ({name})"
            asked = bl.records_for(b, spec.instruction, spec.train, chosen, spec.seed)
            if (why := _too_long(tok, asked, max_new_tokens)) is not None:
                out["skipped"][b.name] = why
                log(f"{what}: skipped, {why}", 0, 0)
                break
            res = scoring.evaluate(model, tok, asked, max_new_tokens, batch_size, cache=cache,
                                   progress=lambda done, total, what=what: progress(what, done, total),
                                   response_format=fmt if b.constrained else None, grammars=grammars)
            log(what, res["generated"], len(asked))
            out["sets"][name][b.name] = res
    return out


def _too_long(tok, asked: list[dict], max_new_tokens: int) -> str | None:
    limit = getattr(tok, "model_max_length", None)
    if tok is None or not limit or limit > 1_000_000:  # transformers' "no limit" is a huge number
        return None
    longest = max(len(p) for p in scoring.chat_prompt_ids(tok, [scoring.prompt_messages(r) for r in asked]))
    if longest + max_new_tokens <= limit:
        return None
    return f"its longest prompt ({longest} tokens) and answer ({max_new_tokens}) exceed the model's {limit}"
