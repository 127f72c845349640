#!/usr/bin/env python3
"""Generate the demo drop of the second demo task, `routing`: send a customer-support message to the team that
handles it, and say whether to escalate it.

The model answers with strict JSON:

    {"team": ..., "escalate": ...}

`team` follows the message's intent (TEAMS below) and `escalate` is true when the message is urgent (the
extraction task's `urgency: high`). The messages come from the same generator as the extraction drops
(demo_messages.py), without personal data. One drop in OpenAI chat format is written to
``data/raw/routing/``, with a little export mess (exact duplicates, empty answers) for the cleaning to count.

Standard library only. Deterministic: the same seed gives byte-identical files. Usage::

    python data/generate_routing.py            # seed 23, writes data/raw/routing/
    python data/generate_routing.py --seed 5 --out /tmp/raw/routing
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from demo_messages import Generator

DEFAULT_SEED = 23
DROP = "2026-05-routing_chat.jsonl"
ROWS, EXACT_DUP, EMPTY_ANSWER = 240, 6, 3
INSTRUCTION = ("Route the customer message to one team: billing, orders, shipping, returns, accounts or product. "
               "Answer as JSON with team and escalate (true if it is urgent).")
TEAMS = {"refund": "billing", "billing_issue": "billing", "cancel_order": "orders", "shipping_status": "shipping",
         "damaged_item": "returns", "return_request": "returns", "account_access": "accounts",
         "product_question": "product"}


def answer(extraction_answer: str) -> str:
    """The routing answer of a message, from its extraction answer (intent and urgency)."""
    a = json.loads(extraction_answer)
    return json.dumps({"team": TEAMS[a["intent"]], "escalate": a["urgency"] == "high"})


def line(message: str, reply: str | None) -> str:
    msgs = [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": message}]
    if reply is not None:
        msgs.append({"role": "assistant", "content": reply})
    return json.dumps({"messages": msgs}, ensure_ascii=False)


def build(seed: int) -> list[str]:
    gen, rng = Generator(seed), random.Random(seed)
    rows = [line(r.message, answer(r.answer)) for r in (gen.record(allow_pii=False) for _ in range(ROWS))]
    rows += [line(gen.record(allow_pii=False).message, "") for _ in range(EMPTY_ANSWER)]
    rows += rng.sample(rows[:ROWS], EXACT_DUP)
    rng.shuffle(rows)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "raw" / "routing")
    args = ap.parse_args(argv)
    rows = build(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / DROP).write_bytes("".join(r + "\n" for r in rows).encode("utf-8"))
    teams = {}
    for r in rows:
        msgs = json.loads(r)["messages"]
        if len(msgs) == 3 and msgs[2]["content"]:
            teams[json.loads(msgs[2]["content"])["team"]] = teams.get(json.loads(msgs[2]["content"])["team"], 0) + 1
    print(f"seed={args.seed} -> {args.out / DROP}: {len(rows)} rows ({ROWS} examples, {EXACT_DUP} exact "
          f"duplicates, {EMPTY_ANSWER} empty answers); teams {dict(sorted(teams.items()))}")


if __name__ == "__main__":
    main()
