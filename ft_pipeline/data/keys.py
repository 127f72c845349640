"""The keys an example is compared by. Its id (the exact conversation); its normalized key (case, punctuation and
whitespace ignored: a normalized duplicate, and what the split deals by); and its input and answer keys, the same
for the system and user messages and for the assistant messages apart, with the words near_dup.normalized leaves
(what MinHash compares). A duplicate has the answer key of the row it duplicates; two rows with one input key and
different answer keys are a label conflict (data/conflicts.py)."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np

from ft_pipeline.data.bulk import chunked
from ft_pipeline.data.near_dup import _TO_SPACE

_SEP = "\x00"  # texts are joined with it; a text holding it is keyed on its own
_PUNCT_WS = re.compile(r"[\W_]+", re.UNICODE)
_json_str = json.encoder.encode_basestring  # a str as a JSON string, ensure_ascii=False (C-accelerated)
# ASCII letters and digits stay, every other ASCII byte (punctuation, "_", whitespace) becomes a space, and the
# separator stays itself: for ASCII text, the words _PUNCT_WS leaves, and those near_dup.normalized leaves.
_ASCII_WORDS = bytes(b if chr(b).isalnum() or b == 0 else 0x20 for b in range(128)) + bytes(range(128, 256))
_PUNCT_WS_BATCH = re.compile(r"[^\w\x00]+")  # _PUNCT_WS once "_" is a space, not crossing the separator
_WORDS = _TO_SPACE[:0] + b"\x00" + _TO_SPACE[1:]  # near_dup.normalized's bytes translation, separator kept


def example_id(messages: list[dict]) -> str:
    """Stable id of a normalized example: the same conversation always has the same id (sha256 of the compact
    JSON [[role, content], ...], assembled from the C string encoder json.dumps itself uses)."""
    blob = "[" + ",".join(f"[{_json_str(m['role'])},{_json_str(m['content'])}]" for m in messages) + "]"
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _key(parts) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def near_dup_key(messages: list[dict]) -> str:
    """Key that two near-identical examples share: case, punctuation and whitespace do not count."""
    return _key(m["role"] + ":" + _PUNCT_WS.sub(" ", m["content"].casefold()).strip() for m in messages)


def _words(text: str) -> str:
    """The words of a text as near_dup.normalized splits it, joined by single spaces."""
    return b" ".join(text.casefold().encode().translate(_TO_SPACE).split()).decode()


def side_keys(messages: list[dict]) -> tuple[str, str]:
    """(input key, answer key): the key of the system and user messages and that of the assistant messages,
    each a hash of role and words per message (case, punctuation and whitespace do not count)."""
    return (_key(m["role"] + ":" + _words(m["content"]) for m in messages if m["role"] != "assistant"),
            _key(m["role"] + ":" + _words(m["content"]) for m in messages if m["role"] == "assistant"))


def as_uint64(keys: list[str]) -> np.ndarray:
    """16-hex-digit keys as unsigned 64-bit integers, for array passes (lsh groups, sorting)."""
    return np.frombuffer(bytes.fromhex("".join(keys)), dtype=">u8").astype(np.uint64)


def _fold_many(contents: list[str]) -> tuple[list[str], list[str]] | None:
    """Each content folded as near_dup_key folds it, and as the words near_dup.normalized leaves, in a few
    passes over all of them joined; None when one holds the separator."""
    joined = _SEP.join(contents)
    if joined.count(_SEP) != max(len(contents) - 1, 0):
        return None
    if joined.isascii():  # the common case: a byte translation, not a Unicode regex (the same words, both ways)
        folded = [" ".join(t.split()) for t in joined.lower().encode().translate(_ASCII_WORDS).decode().split(_SEP)]
        return folded, folded
    folded = [t.strip() for t in _PUNCT_WS_BATCH.sub(" ", joined.casefold().replace("_", " ")).split(_SEP)]
    return folded, [b" ".join(t.split()).decode() for t in joined.casefold().encode().translate(_WORDS).split(b"\x00")]


@chunked
def example_keys(examples: list[list[dict]]) -> list[tuple[str, str, str]]:
    """(`near_dup_key`, *`side_keys`) of each example, the folding done once over all contents joined."""
    if (both := _fold_many([m["content"] for msgs in examples for m in msgs])) is None:
        return [(near_dup_key(msgs), *side_keys(msgs)) for msgs in examples]
    folded, words = both
    out, i, sha = [], 0, hashlib.sha256
    for msgs in examples:
        j = i + len(msgs)
        roles = [m["role"] for m in msgs]
        tagged = [r + ":" + w for r, w in zip(roles, words[i:j])]
        near = tagged if folded is words else [r + ":" + f for r, f in zip(roles, folded[i:j])]
        if roles[-1] == "assistant" and "assistant" not in roles[:-1]:  # one answer, last: the common case
            inp, ans = "\x1f".join(tagged[:-1]), tagged[-1]
        else:
            inp = "\x1f".join([t for r, t in zip(roles, tagged) if r != "assistant"])
            ans = "\x1f".join([t for r, t in zip(roles, tagged) if r == "assistant"])
        out.append((sha("\x1f".join(near).encode()).hexdigest()[:16], sha(inp.encode()).hexdigest()[:16],
                    sha(ans.encode()).hexdigest()[:16]))
        i = j
    return out


@chunked
def near_dup_keys(examples: list[list[dict]]) -> list[str]:
    """`near_dup_key` of each example, with the punctuation pass done once over all contents joined."""
    return [k[0] for k in example_keys(examples)]


@chunked
def answer_keys(examples: list[list[dict]]) -> list[str]:
    """The answer key of each example (`side_keys(...)[1]`), its assistant messages folded at once."""
    answers = [[m["content"] for m in msgs if m["role"] == "assistant"] for msgs in examples]
    if (both := _fold_many([c for a in answers for c in a])) is None:
        return [side_keys(msgs)[1] for msgs in examples]
    words, sha = iter(both[1]), hashlib.sha256
    return [sha("\x1f".join(["assistant:" + next(words) for _ in a]).encode()).hexdigest()[:16] for a in answers]
