"""Prompting baselines: what the base model does when it is asked well instead of tuned (issue 29).

Every baseline is the base model with a task instruction as the system message:

  zero_shot   the instruction alone;
  few_shot    k training examples, the same for every request, as prior user/assistant turns;
  dynamic     each request's k nearest training examples, as prior turns, the nearest last;

and each of those again under the output schema (`_schema`: constrained decoding, structured/) when one is
given. The instruction is the preset's `baseline_instruction`, else the system prompt most common in the
training data, else one derived from the training answers (their JSON keys and, for a key with few distinct
values, those values).

"Nearest" is the MinHash estimate of the Jaccard similarity of word bigrams (data/near_dup.py's signatures, the
near-duplicate machinery) of the user messages, computed against every training signature (exact over the
signatures, not LSH banding: a few thousand training rows x 128 permutations is one numpy comparison per request,
and banding would miss the weak neighbours a short request has). Ties go to the earlier training row. Only
training rows are ever shown: the holdout and the hand-written set are what is evaluated.

Everything here is plain data (no model): a baseline's prompts are records whose messages are the prompt plus
the reference answer, so the evaluation cache (evaluation/cache.py) names each answer by the exact prompt it
answered, and a retrain recomputes nothing unless the instruction, the shots or the example changed."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass

import numpy as np

KINDS = ("zero_shot", "few_shot", "dynamic")
# 128 permutations: similarity steps of 1/128, so fewer ties than the near-duplicate check's 64.
NUM_PERM = 128
# A key of the training answers whose values are few enough to list in the derived instruction.
MAX_LISTED_VALUES = 12


@dataclass(frozen=True)
class Baseline:
    kind: str  # one of KINDS
    k: int = 0  # examples shown (0 for zero_shot)
    constrained: bool = False  # decoded under the output schema

    @property
    def name(self) -> str:
        base = self.kind if self.kind == "zero_shot" else f"{self.kind}_{self.k}"
        return base + ("_schema" if self.constrained else "")


def definitions(kinds: list[str] | tuple[str, ...], k: int, schema: bool) -> list[Baseline]:
    """The baselines a run evaluates: each kind (few-shot kinds only when k > 0), and each again under the schema
    when there is one."""
    plain = [Baseline(kind, 0 if kind == "zero_shot" else k) for kind in KINDS if kind in kinds
             and (kind == "zero_shot" or k > 0)]
    return plain + ([Baseline(b.kind, b.k, True) for b in plain] if schema else [])


def definition_key(baseline: Baseline, instruction: str, schema_key: str = "") -> str:
    """A hash of what defines a baseline's answers apart from the base model and the examples' own prompts."""
    spec = {"kind": baseline.kind, "k": baseline.k, "instruction": instruction,
            "schema": schema_key if baseline.constrained else "", "prompt_format": 1}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


def _turns(record: dict) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in record["messages"]]


def single_turn(record: dict) -> bool:
    """A record of one user message and its answer (after an optional system message): what a shot can be."""
    roles = [m["role"] for m in record["messages"]]
    return roles in (["user", "assistant"], ["system", "user", "assistant"])


def user_text(record: dict) -> str:
    """The last user message of a record's prompt: what a request is matched on."""
    return next(m["content"] for m in reversed(record["messages"][:-1]) if m["role"] == "user")


def default_instruction(train: list[dict]) -> str:
    """The system prompt most common in the training data (ties: the first seen), or, with none, one derived
    from the training answers: a JSON object's keys, with the values of each key that takes few distinct ones."""
    systems = Counter(r["messages"][0]["content"] for r in train if r["messages"][0]["role"] == "system")
    if systems:
        return systems.most_common(1)[0][0]
    answers = [_json_object(r["messages"][-1]["content"]) for r in train]
    objects = [a for a in answers if a is not None]
    if not objects or len(objects) < 0.5 * len(answers):
        return "Answer the user's message in the same form as the answers you were trained on, and nothing else."
    keys = Counter(tuple(o) for o in objects).most_common(1)[0][0]
    lines = [f"Read the user's message and answer with only a JSON object with the keys {', '.join(keys)}."]
    for key in keys:
        values = Counter(json.dumps(o[key]) for o in objects if key in o)
        listed = [v for v, _ in values.most_common() if v != "null"]
        if len(values) <= MAX_LISTED_VALUES:
            lines.append(f"{key} is one of {', '.join(listed)}" + (", or null." if "null" in values else "."))
        elif "null" in values:
            lines.append(f"{key} is null when the message does not say.")
    return " ".join(lines)


def _json_object(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def _hash_order(records: list[dict], seed: int) -> list[int]:
    from ft_pipeline.evaluation.cache import example_key

    return sorted(range(len(records)), key=lambda i: hashlib.sha256(
        f"{seed}:{example_key(records[i])}".encode()).hexdigest())


def fixed_shots(train: list[dict], k: int, seed: int = 0) -> list[int]:
    """The indices of the k training examples every few-shot request is shown: the first k single-turn
    examples in a seeded order of their content hashes (the same examples on every machine and every run, as
    long as they are in the training set), each with a different answer."""
    out, seen = [], set()
    for i in _hash_order(train, seed):
        answer = train[i]["messages"][-1]["content"]
        if single_turn(train[i]) and answer not in seen:
            out.append(i)
            seen.add(answer)
            if len(out) == k:
                break
    return out


def subset(records: list[dict], n: int, seed: int = 0) -> list[int]:
    """The indices (in order) of a fixed, seeded subset of n records (all of them when n is 0 or >= their
    number): chosen by content hash, so the same examples stay in it while the holdout grows."""
    if not n or n >= len(records):
        return list(range(len(records)))
    return sorted(_hash_order(records, seed)[:n])


def user_signatures(records: list[dict]) -> np.ndarray:
    """MinHash signatures (records x NUM_PERM) of each record's user message."""
    from ft_pipeline.data.lsh import NearDupParams
    from ft_pipeline.data.near_dup import signatures

    return signatures(([{"role": "user", "content": user_text(r)}] for r in records),
                      NearDupParams(num_perm=NUM_PERM))


def similarity(query_sig: np.ndarray, pool_sig: np.ndarray) -> np.ndarray:
    """The estimated Jaccard similarity (share of equal MinHash values) of each query to each pool row."""
    return (query_sig[:, None, :] == pool_sig[None, :, :]).mean(axis=-1)


def nearest(query_sig: np.ndarray, pool_sig: np.ndarray, k: int, chunk: int = 64) -> np.ndarray:
    """(queries x k) pool indices: each query's k most similar pool rows, most similar first, ties to the lower
    index."""
    out = np.empty((len(query_sig), min(k, len(pool_sig))), dtype=np.int64)
    order = np.arange(len(pool_sig))
    for lo in range(0, len(query_sig), chunk):
        sim = similarity(query_sig[lo:lo + chunk], pool_sig)
        for row, s in enumerate(sim):
            out[lo + row] = np.lexsort((order, -s))[:out.shape[1]]
    return out


def dynamic_shots(train: list[dict], records: list[dict], k: int) -> list[list[int]]:
    """For each record, the training indices of its k nearest single-turn training examples, nearest first."""
    pool = [i for i, r in enumerate(train) if single_turn(r)]
    if not pool or not records or k <= 0:
        return [[] for _ in records]
    near = nearest(user_signatures(records), user_signatures([train[i] for i in pool]), k)
    return [[pool[j] for j in row] for row in near]


def prompt(instruction: str, shots: list[dict], record: dict) -> list[dict]:
    """The chat a baseline sends: the instruction as the system message, each shot as a prior user/assistant
    exchange, then the request (its own system message, if any, replaced by the instruction)."""
    msgs = [{"role": "system", "content": instruction}]
    for s in shots:
        msgs += [m for m in _turns(s) if m["role"] != "system"]
    return msgs + [m for m in _turns(record)[:-1] if m["role"] != "system"]


def records_for(baseline: Baseline, instruction: str, train: list[dict], records: list[dict],
                seed: int = 0) -> list[dict]:
    """Each record as the baseline asks it: messages = its prompt + the reference answer (so the evaluation
    scores it and caches it by the exact prompt). Dynamic shots are listed nearest last (closest to the
    request). `shot_ids` holds the training indices shown."""
    if baseline.kind == "zero_shot":
        shots = [[] for _ in records]
    elif baseline.kind == "few_shot":
        shots = [fixed_shots(train, baseline.k, seed)] * len(records)
    else:
        shots = [list(reversed(s)) for s in dynamic_shots(train, records, baseline.k)]
    return [{"id": r.get("id", ""), "shot_ids": s,
             "messages": prompt(instruction, [train[i] for i in s], r) + [_turns(r)[-1]]}
            for r, s in zip(records, shots, strict=True)]
