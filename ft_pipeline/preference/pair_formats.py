"""The preference-pair formats people export, detected per drop, and the conversion of one row to the canonical
pair: `prompt` (chat messages ending in a user turn), `chosen` and `rejected` (one assistant message each), the
conversational form TRL's DPOTrainer takes. A row that cannot be converted raises RowError with a reason.

  openai_preference    {"input": {"messages": [...]}, "preferred_output": [msg], "non_preferred_output": [msg]}
  trl_preference       {"prompt", "chosen", "rejected"}: strings or message lists; with no "prompt", chosen and
                       rejected are whole conversations whose shared leading messages are the prompt (implicit)
  alpaca_preference    LLaMA-Factory: {"instruction", "input"?, "system"?, "history"?, "chosen": str, "rejected": str}
  sharegpt_preference  LLaMA-Factory: {"conversations": [{"from", "value"}...], "system"?, "chosen": turn,
                       "rejected": turn}
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ft_pipeline.data.errors import DropError, RowError
from ft_pipeline.data.formats import RawRow, _sharegpt_messages

FORMATS = ("openai_preference", "trl_preference", "alpaca_preference", "sharegpt_preference")
SIDES = ("chosen", "rejected")

_ROLES = ("system", "user", "assistant")
_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string"}
_EXPECTED = ("expected 'input'/'preferred_output'/'non_preferred_output' (OpenAI), 'prompt'/'chosen'/'rejected' "
             "(TRL), 'instruction'/'chosen'/'rejected' (LLaMA-Factory Alpaca) or 'conversations'/'chosen'/'rejected' "
             "(LLaMA-Factory ShareGPT)")


def row_format(data: Any) -> str | None:
    """The preference format a row's keys say, or None."""
    if not isinstance(data, dict):
        return None
    if "preferred_output" in data or "non_preferred_output" in data:
        return "openai_preference"
    if "chosen" not in data and "rejected" not in data:
        return None
    if "conversations" in data:
        return "sharegpt_preference"
    if "instruction" in data:
        return "alpaca_preference"
    return "trl_preference"


def detect_format(rows: list[RawRow], path: Path | str) -> str:
    """The preference format most rows of the drop have (every row votes); DropError naming the file when none."""
    votes = Counter(f for r in rows if (f := row_format(r.data)))
    if not votes:
        sample = next((r for r in rows if r.data is not None), None)
        what = (f"keys {sorted(sample.data)[:6]}" if sample and isinstance(sample.data, dict)
                else f"a JSON {type(sample.data).__name__}" if sample else "no parseable row")
        raise DropError(f"{path}: no row is in a preference format: line {sample.line if sample else '?'} has "
                        f"{what}; {_EXPECTED}")
    return votes.most_common(1)[0][0]


def to_pair(data: Any, fmt: str) -> dict:
    """{"prompt", "chosen", "rejected"} of one parsed row, checked by `check_pair`, or RowError."""
    if not isinstance(data, dict):
        raise RowError("wrong_data_type",
                       f"wrong data type: the row is a JSON {type(data).__name__}, expected an object")
    if fmt == "openai_preference":
        prompt = _messages(_field(_field(data, "input", dict), "messages", list, "'input'"), "input")
        chosen, rejected = (_messages(_field(data, k, list), k) for k in ("preferred_output", "non_preferred_output"))
    elif fmt == "trl_preference":
        prompt, chosen, rejected = _trl(data)
    elif fmt == "alpaca_preference":
        prompt = _alpaca_prompt(data)
        chosen, rejected = ([{"role": "assistant", "content": _field(data, k, str)}] for k in SIDES)
    elif fmt == "sharegpt_preference":
        prompt = _system(data) + _sharegpt_messages({"conversations": _field(data, "conversations", list)})
        chosen, rejected = (_sharegpt_side(data, k) for k in SIDES)
    else:
        raise ValueError(f"unknown preference format {fmt!r}; expected one of {FORMATS}")
    check_pair(prompt, chosen, rejected)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def check_pair(prompt: list[dict], chosen: list[dict], rejected: list[dict]) -> None:
    """RowError unless each side is one non-empty assistant message and the prompt ends in a user turn. (That
    the two sides differ is checked after normalization, in pairs.py.)"""
    for name, side in zip(SIDES, (chosen, rejected)):
        if not side or all(not m["content"].strip() for m in side):
            raise RowError("empty_side", f"'{name}' is empty: a pair needs two answers to compare")
        if len(side) > 1:
            raise RowError("multi_turn_completion", f"'{name}' has {len(side)} messages; a pair compares one "
                           "assistant answer (put earlier turns in the prompt)")
        if side[0]["role"] != "assistant":
            raise RowError("completion_not_assistant", f"'{name}' is a {side[0]['role']} message; it must be "
                           "the assistant's answer")
    roles = [m["role"] for m in prompt]
    if "user" not in roles:
        raise RowError("no_user_turn", "the prompt has no user message: the answers answer nothing")
    if roles[-1] != "user":
        raise RowError("prompt_not_user_last", f"the prompt ends with a message from the {roles[-1]}; it must "
                       "end with the user turn the answers reply to")
    if "system" in roles[1:]:
        raise RowError("system_not_first", "a system message may only come first")
    for i, m in enumerate(prompt, start=1):
        if not m["content"].strip():
            raise RowError("empty_turn", f"prompt message {i} ({m['role']}) is empty or whitespace only")
    for m in prompt + chosen + rejected:
        try:
            m["content"].encode("utf-8")
        except UnicodeEncodeError as e:  # JSON can spell a lone surrogate; no UTF-8 file can hold it
            raise RowError("invalid_unicode", f"a {m['role']} message holds an unpaired surrogate at character "
                           f"{e.start}: not valid Unicode text") from None


def _field(data: dict, key: str, kind: type, where: str | None = None):
    name = f"'{key}'" + (f" in {where}" if where else "")
    if data.get(key) is None:
        raise RowError("missing_field", f"missing {name}")
    if not isinstance(data[key], kind):
        raise RowError("wrong_data_type", f"wrong data type: {name} is a {type(data[key]).__name__}, "
                       f"expected {_TYPE_NAMES[kind]}")
    return data[key]


def _messages(value: list, where: str) -> list[dict]:
    out = []
    for i, m in enumerate(value, start=1):
        at = f"{where} message {i}"
        if not isinstance(m, dict):
            raise RowError("wrong_data_type", f"wrong data type: {at} is a {type(m).__name__}, expected an object")
        if m.get("tool_calls") or m.get("function_call") or m.get("role") in ("tool", "function"):
            raise RowError("tool_calls", f"{at}: tool and function calls are not supported; remove them or the row")
        role = _field(m, "role", str, at)
        if role not in _ROLES:
            raise RowError("unrecognized_role", f"{at} has unrecognized role {role!r}; expected system, user or "
                           "assistant")
        out.append({"role": role, "content": _field(m, "content", str, at)})
    return out


def _text_or_messages(data: dict, key: str, role: str) -> list[dict]:
    value = data[key]
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return _messages(value, key)
    raise RowError("wrong_data_type", f"wrong data type: '{key}' is a {type(value).__name__}, expected a string "
                   "or a list of messages")


def _trl(data: dict) -> tuple[list[dict], list[dict], list[dict]]:
    for key in SIDES:
        if data.get(key) is None:
            raise RowError("missing_field", f"missing '{key}'")
    if data.get("prompt") is not None:
        return tuple(_text_or_messages(data, k, "user" if k == "prompt" else "assistant")
                     for k in ("prompt", *SIDES))
    # TRL's implicit prompt: chosen and rejected are whole conversations, the prompt their shared leading turns.
    if not all(isinstance(data[k], list) for k in SIDES):
        raise RowError("missing_field", "missing 'prompt': plain-text 'chosen'/'rejected' need an explicit prompt "
                       "(only conversational rows share an implicit one)")
    chosen, rejected = (_messages(data[k], k) for k in SIDES)
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    return chosen[:n], chosen[n:], rejected[n:]


def _system(data: dict) -> list[dict]:
    return [{"role": "system", "content": _field(data, "system", str)}] if data.get("system") else []


def _alpaca_prompt(data: dict) -> list[dict]:
    instruction = _field(data, "instruction", str)
    inp = data.get("input") or ""
    if not isinstance(inp, str):
        raise RowError("wrong_data_type", f"wrong data type: 'input' is a {type(inp).__name__}, expected a string")
    prompt = _system(data)
    for i, turn in enumerate(data.get("history") or [], start=1):
        if not (isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise RowError("wrong_data_type", f"wrong data type: history item {i} must be [instruction, response] "
                           "strings")
        prompt += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    # The same user turn as an SFT Alpaca row (data/formats.py), so SFT and DPO see one prompt.
    return prompt + [{"role": "user", "content": f"{instruction}\n\n{inp}" if inp.strip() else instruction}]


def _sharegpt_side(data: dict, key: str) -> list[dict]:
    side = data.get(key)
    if side is None:
        raise RowError("missing_field", f"missing '{key}'")
    if isinstance(side, str):
        return [{"role": "assistant", "content": side}]
    try:
        return _sharegpt_messages({"conversations": side if isinstance(side, list) else [side]})
    except RowError as e:
        raise RowError(e.code, f"'{key}': {e}") from None
