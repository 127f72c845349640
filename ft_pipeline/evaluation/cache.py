"""Per-example evaluation results, kept per model, so a model is never asked the same question twice.

A model is named by a content hash (the base model's, or the base's and the adapter's together), an example by
the hash of its messages. An entry holds the greedy answer, whether generation stopped at the end-of-turn token
(and after how many tokens), the example's summed reference NLL and token count, and what the answer cost: the
prompt's length in tokens and the measured seconds (its share of the batch's wall time). After a retrain, the base
and the champion only generate for holdout examples they have not seen (none, when the holdout did not change):
only the new adapter generates for all of them.

An answer generated with a budget of N new tokens is reused for a budget M when it stopped by itself within M
tokens (greedy decoding would produce the same tokens), or when M == N."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def example_key(record: dict) -> str:
    msgs = [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    return hashlib.sha256(json.dumps(msgs, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]


def model_key(*content_hashes: str) -> str:
    return hashlib.sha256(":".join(content_hashes).encode()).hexdigest()[:32]


class EvalCache:
    """The entries of one model, in a JSONL file under the cache folder (`None`: remember nothing)."""

    def __init__(self, cache_dir: Path | None, key: str | None):
        self.path = Path(cache_dir) / f"{key}.jsonl" if cache_dir is not None and key else None
        self.entries: dict[str, dict] = {}
        self._new: list[dict] = []
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    e = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the line a killed run was appending: that answer is generated again
                self.entries[e["key"]] = e

    def get(self, record: dict, max_new_tokens: int) -> dict | None:
        e = self.entries.get(example_key(record))
        if e is None:
            return None
        if e["max_new_tokens"] == max_new_tokens or (e["finished"] and e["n_new"] <= max_new_tokens):
            return e
        return None

    def put(self, record: dict, prediction: str, n_new: int, finished: bool, max_new_tokens: int,
            nll_sum: float, n_tokens: int, seconds: float | None = None, prompt_tokens: int | None = None) -> None:
        e = {"key": example_key(record), "prediction": prediction, "n_new": n_new, "finished": finished,
             "max_new_tokens": max_new_tokens, "nll_sum": nll_sum, "n_tokens": n_tokens}
        if seconds is not None:
            e["seconds"] = seconds
        if prompt_tokens is not None:
            e["prompt_tokens"] = prompt_tokens
        self.entries[e["key"]] = e
        self._new.append(e)

    def flush(self) -> None:
        if self.path is None or not self._new:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in self._new))
        self._new = []
