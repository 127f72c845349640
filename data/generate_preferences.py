"""The demo preference drop, `preferences/2026-04-preferences.jsonl`: TRL's conversational form with an
explicit prompt, one line a pair:

    {"prompt": [{"role": "user", "content": MSG}], "chosen": [{"role": "assistant", "content": ANSWER}],
     "rejected": [{"role": "assistant", "content": WRONG}]}

Each prompt is a new support message (demo_messages.Generator, after the SFT drops, so none repeats an SFT
message); chosen is its correct answer, formatted exactly as the SFT answers; rejected is that answer with one
mistake of the kind a tuned extraction model makes (ERRORS). A few bad rows (BAD_ROWS) exercise the
quarantine and the dedup. Counts: data/README.md."""

import json

from demo_templates import INTENTS

PREF_DIR = "preferences"
PREF_DROP = "2026-04-preferences.jsonl"

# What the rejected answer gets wrong, and in how many pairs.
ERRORS = {
    "order_digit": 64,  # one digit of the order id changed
    "neighbour_intent": 64,  # a neighbouring intent (NEIGHBOURS)
    "wrong_urgency": 64,
    "missing_field": 64,  # one of the four keys left out
    "null_order_id": 57,  # order_id null although the message has one
}
# Rows the pipeline must quarantine (the first two) or remove as duplicates.
BAD_ROWS = {"chosen_equals_rejected": 3, "empty_rejected": 2, "duplicate": 2}

# The intents a model confuses a message's intent with.
NEIGHBOURS = {
    "refund": ["return_request", "billing_issue"],
    "cancel_order": ["refund", "return_request"],
    "shipping_status": ["damaged_item", "cancel_order"],
    "damaged_item": ["return_request", "refund"],
    "billing_issue": ["refund", "account_access"],
    "account_access": ["billing_issue", "product_question"],
    "product_question": ["account_access", "return_request"],
    "return_request": ["refund", "damaged_item"],
}
assert sorted(NEIGHBOURS) == sorted(INTENTS)
URGENCIES = ["low", "medium", "high"]
KEYS = ["intent", "product", "order_id", "urgency"]
NEEDS_ORDER = ("order_digit", "null_order_id")


def rejected_answer(rng, answer, kind):
    """The correct answer with one mistake of the given kind, as JSON in the SFT answers' format."""
    a = json.loads(answer)
    if kind == "order_digit":
        digits = a["order_id"][4:]
        i = rng.randrange(len(digits))
        a["order_id"] = "ORD-" + digits[:i] + rng.choice([d for d in "0123456789" if d != digits[i]]) + digits[i + 1:]
    elif kind == "neighbour_intent":
        a["intent"] = rng.choice(NEIGHBOURS[a["intent"]])
    elif kind == "wrong_urgency":
        a["urgency"] = rng.choice([u for u in URGENCIES if u != a["urgency"]])
    elif kind == "missing_field":
        del a[rng.choice(KEYS)]
    elif kind == "null_order_id":
        a["order_id"] = None
    else:
        raise ValueError(kind)
    return json.dumps(a)


def _record(gen, needs_order):
    while True:
        rec = gen.record()
        if not needs_order or json.loads(rec.answer)["order_id"] is not None:
            return rec


def build_preferences(gen):
    """The rows of the preference drop, in file order: dicts with kind, message, chosen, rejected."""
    rng = gen.rng
    rows = []
    for kind, n in ERRORS.items():
        for _ in range(n):
            rec = _record(gen, kind in NEEDS_ORDER)
            rows.append({"kind": kind, "message": rec.message, "chosen": rec.answer,
                         "rejected": rejected_answer(rng, rec.answer, kind),
                         "pii": rec.meta["email"] or rec.meta["phone"]})
    good = list(rows)
    for kind in ("chosen_equals_rejected", "empty_rejected"):
        for _ in range(BAD_ROWS[kind]):
            rec = gen.record(allow_pii=False)
            rows.append({"kind": kind, "message": rec.message, "chosen": rec.answer,
                         "rejected": rec.answer if kind == "chosen_equals_rejected" else "", "pii": False})
    rows += [dict(src, kind="duplicate") for src in rng.sample(good, BAD_ROWS["duplicate"])]
    rng.shuffle(rows)
    assert len(rows) == sum(ERRORS.values()) + sum(BAD_ROWS.values())
    return rows


def pair_line(r):
    return json.dumps({"prompt": [{"role": "user", "content": r["message"]}],
                       "chosen": [{"role": "assistant", "content": r["chosen"]}],
                       "rejected": [{"role": "assistant", "content": r["rejected"]}]}, ensure_ascii=False)


def write_preferences(path, rows):
    path.write_bytes("".join(pair_line(r) + "\n" for r in rows).encode("utf-8"))


LABELS = {
    "order_digit": "rejected: one digit of the order id changed",
    "neighbour_intent": "rejected: a neighbouring intent",
    "wrong_urgency": "rejected: the wrong urgency",
    "missing_field": "rejected: a field missing",
    "null_order_id": "rejected: order_id null where the message has one",
    "chosen_equals_rejected": "bad: chosen identical to rejected",
    "empty_rejected": "bad: empty rejected",
    "duplicate": "bad: exact duplicate of a pair",
}


def summarize_preferences(rows):
    """A markdown table of the drop's counts (the one in data/README.md; its tests read it)."""
    count = lambda kind: sum(r["kind"] == kind for r in rows)  # noqa: E731
    lines = [f"| | `{PREF_DIR}/{PREF_DROP}` |", "|---|---:|", f"| pairs (lines) | {len(rows)} |"]
    lines += [f"| {LABELS[k]} | {count(k)} |" for k in (*ERRORS, *BAD_ROWS)]
    lines.append(f"| pairs whose prompt has an email and/or phone number | {sum(r['pii'] for r in rows)} |")
    lines += [f"| expected kept | {sum(count(k) for k in ERRORS)} |",
              f"| expected quarantined | {count('chosen_equals_rejected') + count('empty_rejected')} |",
              f"| expected duplicates | {count('duplicate')} |"]
    return "\n".join(lines)
