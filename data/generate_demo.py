#!/usr/bin/env python3
"""Generate the demo "data drops" for the support-message extraction task.

The model is fine-tuned to turn a customer-support message into strict JSON:

    {"intent": ..., "product": ..., "order_id": ..., "urgency": ...}

Three SFT drops in three export formats are written to ``data/raw/``:

  * ``2026-01-support_chat.jsonl``  OpenAI chat format, one object per line
  * ``2026-02-helpdesk_alpaca.json`` Alpaca records, one JSON array
  * ``2026-03-tickets.csv``          CSV with header ``prompt,completion``

and one preference drop to ``data/raw/preferences/`` (generate_preferences.py):

  * ``2026-04-preferences.jsonl``    TRL prompt/chosen/rejected, conversational

Each drop carries a fixed, counted amount of the mess real exports have
(duplicates, near duplicates, empty answers, malformed lines, wrong roles,
over-long rows, personal data).  See ``data/README.md``.  The message pieces
are in demo_templates.py, their assembly in demo_messages.py.

Standard library only.  Deterministic: the same seed gives byte-identical
files.  Usage::

    python data/generate_demo.py            # seed 7, writes data/raw/
    python data/generate_demo.py --seed 11 --out /tmp/raw
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

from demo_messages import Generator
from demo_templates import INSTRUCTION, PLAIN_TEXT_LINES
from generate_preferences import PREF_DIR, PREF_DROP, build_preferences, summarize_preferences, write_preferences

DEFAULT_SEED = 7

DROP1 = "2026-01-support_chat.jsonl"
DROP2 = "2026-02-helpdesk_alpaca.json"
DROP3 = "2026-03-tickets.csv"

# ---------------------------------------------------------------------------
# Drops
# ---------------------------------------------------------------------------

# Fixed injection counts per drop (targets: ~3% exact dups, ~3% near dups,
# ~1% empty answers, ~0.5% malformed, ~0.5% wrong roles, 3-5 over-long).
PLAN = {
    DROP1: {"rows": 1200, "exact_dup": 36, "near_dup": 36, "empty_answer": 12,
            "malformed": 6, "wrong_role": 6, "over_long": 4},
    DROP2: {"rows": 700, "exact_dup": 21, "near_dup": 21, "empty_answer": 7, "over_long": 4},
    DROP3: {"rows": 600, "exact_dup": 18, "cross_drop_dup": 8, "near_dup": 18, "empty_answer": 6,
            "over_long": 3, "card": 5, "iban": 3},
}


def _row(rec, kind, **extra):
    return dict(rec=rec, kind=kind, message=rec.message, answer=rec.answer, **extra)


def build_drop(gen, name, plan, drop1_clean=None):
    rng = gen.rng
    p = dict(plan)
    n_mess = sum(p.get(k, 0) for k in ("exact_dup", "cross_drop_dup", "near_dup", "empty_answer",
                                        "malformed", "wrong_role", "over_long"))
    n_clean = p["rows"] - n_mess
    clean = []
    for i in range(n_clean):
        money = "card" if i < p.get("card", 0) else ("iban" if i < p.get("card", 0) + p.get("iban", 0) else None)
        clean.append(_row(gen.record(money_pii=money), "clean"))
    rng.shuffle(clean)
    rows = list(clean)

    is_chat = name == DROP1
    if is_chat:
        for r in rows:
            r["system"] = rng.random() < 0.10

    for _ in range(p.get("exact_dup", 0)):
        src = rng.choice(clean)
        rows.append(dict(src, kind="exact_dup"))
    for src in rng.sample(drop1_clean or [], p.get("cross_drop_dup", 0)):
        rows.append(dict(src, kind="cross_drop_dup", system=False))
    for src in rng.sample(clean, p.get("near_dup", 0)):
        nd = gen.near_duplicate(src["rec"])
        rows.append(dict(src, rec=nd, kind="near_dup", message=nd.message))

    empty_variants = ["", "   ", None] if is_chat else [""]
    for i in range(p.get("empty_answer", 0)):
        rec = gen.record(allow_pii=False)
        rows.append(_row(rec, "empty_answer", empty=empty_variants[i % len(empty_variants)],
                         system=is_chat and rng.random() < 0.10))
    role_variants = [("human", "bot"), ("user", "bot"), ("human", "assistant")]
    for i in range(p.get("wrong_role", 0)):
        rec = gen.record(allow_pii=False)
        rows.append(_row(rec, "wrong_role", roles=role_variants[i % len(role_variants)],
                         system=rng.random() < 0.10))
    for i in range(p.get("malformed", 0)):
        if i < len(PLAIN_TEXT_LINES):
            rows.append(dict(rec=None, kind="malformed", plain=PLAIN_TEXT_LINES[i], message=None, answer=None))
        else:
            rec = gen.record(allow_pii=False)
            rows.append(_row(rec, "malformed", truncate=rng.uniform(0.3, 0.8), system=False))
    for _ in range(p.get("over_long", 0)):
        rec = gen.record(long_log=True, allow_pii=False)
        rows.append(_row(rec, "over_long", system=is_chat and rng.random() < 0.10))

    rng.shuffle(rows)
    assert len(rows) == p["rows"], (name, len(rows))
    return rows, clean


def chat_line(r):
    if r["kind"] == "malformed" and "plain" in r:
        return r["plain"]
    msgs = []
    if r.get("system"):
        msgs.append({"role": "system", "content": INSTRUCTION})
    user_role, asst_role = r.get("roles", ("user", "assistant"))
    msgs.append({"role": user_role, "content": r["message"]})
    if r["kind"] == "empty_answer":
        if r["empty"] is not None:
            msgs.append({"role": asst_role, "content": r["empty"]})
    else:
        msgs.append({"role": asst_role, "content": r["answer"]})
    line = json.dumps({"messages": msgs}, ensure_ascii=False)
    if r["kind"] == "malformed":
        line = line[: int(len(line) * r["truncate"])]
    return line


def write_drop1(path, rows):
    text = "".join(chat_line(r) + "\n" for r in rows)
    path.write_bytes(text.encode("utf-8"))


def write_drop2(path, rows):
    recs = [{"instruction": INSTRUCTION, "input": r["message"],
             "output": "" if r["kind"] == "empty_answer" else r["answer"]} for r in rows]
    path.write_bytes((json.dumps(recs, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def write_drop3(path, rows):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["prompt", "completion"])
    for r in rows:
        w.writerow([r["message"], "" if r["kind"] == "empty_answer" else r["answer"]])
    path.write_bytes(buf.getvalue().encode("utf-8"))


# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------

def summarize(drops):
    """drops: list of (name, rows).  Returns a markdown table (mess type x drop)."""
    names = [n for n, _ in drops]
    lines_spec = [
        ("rows (data rows / lines)", lambda rows: len(rows)),
        ("clean unique rows", lambda rows: sum(r["kind"] == "clean" for r in rows)),
        ("exact duplicates (within drop)", lambda rows: sum(r["kind"] == "exact_dup" for r in rows)),
        ("cross-drop duplicates (of drop 1)", lambda rows: sum(r["kind"] == "cross_drop_dup" for r in rows)),
        ("near duplicates", lambda rows: sum(r["kind"] == "near_dup" for r in rows)),
        ("  - casing changed",
         lambda rows: sum(r["kind"] == "near_dup" and r["rec"].meta["near_kind"] == "case" for r in rows)),
        ("  - whitespace changed",
         lambda rows: sum(r["kind"] == "near_dup" and r["rec"].meta["near_kind"] == "space" for r in rows)),
        ("  - trailing punctuation changed",
         lambda rows: sum(r["kind"] == "near_dup" and r["rec"].meta["near_kind"] == "punct" for r in rows)),
        ("empty / missing answer", lambda rows: sum(r["kind"] == "empty_answer" for r in rows)),
        ('  - content "" ', lambda rows: sum(r["kind"] == "empty_answer" and r["empty"] == "" for r in rows)),
        ('  - whitespace only ("   ")',
         lambda rows: sum(r["kind"] == "empty_answer" and r["empty"] == "   " for r in rows)),
        ("  - assistant turn missing",
         lambda rows: sum(r["kind"] == "empty_answer" and r["empty"] is None for r in rows)),
        ("malformed lines", lambda rows: sum(r["kind"] == "malformed" for r in rows)),
        ("  - truncated JSON", lambda rows: sum(r["kind"] == "malformed" and "plain" not in r for r in rows)),
        ("  - plain text, not JSON", lambda rows: sum(r["kind"] == "malformed" and "plain" in r for r in rows)),
        ("wrong roles (human/bot)", lambda rows: sum(r["kind"] == "wrong_role" for r in rows)),
        ("over-long rows (user msg >= 6,000 chars)", lambda rows: sum(r["kind"] == "over_long" for r in rows)),
        ("rows with a system message", lambda rows: sum(bool(r.get("system")) and "plain" not in r for r in rows)),
        ("rows with an email address", lambda rows: sum(bool(r["rec"] and r["rec"].meta["email"]) for r in rows)),
        ("rows with a phone number", lambda rows: sum(bool(r["rec"] and r["rec"].meta["phone"]) for r in rows)),
        ("rows with email and/or phone",
         lambda rows: sum(bool(r["rec"] and (r["rec"].meta["email"] or r["rec"].meta["phone"])) for r in rows)),
        ("rows with a payment card number", lambda rows: sum(bool(r["rec"] and r["rec"].meta["card"]) for r in rows)),
        ("rows with an IBAN", lambda rows: sum(bool(r["rec"] and r["rec"].meta["iban"]) for r in rows)),
        ("answers present", lambda rows: sum(r["kind"] not in ("empty_answer", "malformed") for r in rows)),
        ("  - of which order_id is null", lambda rows: sum(r["kind"] not in ("empty_answer", "malformed")
                                                           and json.loads(r["answer"])["order_id"] is None
                                                           for r in rows)),
    ]
    header = "| | " + " | ".join(f"`{n}`" for n in names) + " |"
    sep = "|---|" + "---:|" * len(names)
    out = [header, sep]
    for label, fn in lines_spec:
        out.append(f"| {label} | " + " | ".join(str(fn(rows)) for _, rows in drops) + " |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "raw")
    args = ap.parse_args(argv)

    gen = Generator(args.seed)
    rows1, clean1 = build_drop(gen, DROP1, PLAN[DROP1])
    rows2, _ = build_drop(gen, DROP2, PLAN[DROP2])
    # cross-drop duplicates copy clean drop-1 rows (same message and answer)
    rows3, _ = build_drop(gen, DROP3, PLAN[DROP3], drop1_clean=clean1)
    # After the SFT drops, from the same generator: their files stay as they were, and no preference prompt
    # repeats an SFT message (the generator remembers every message it made).
    pref_rows = build_preferences(gen)

    args.out.mkdir(parents=True, exist_ok=True)
    write_drop1(args.out / DROP1, rows1)
    write_drop2(args.out / DROP2, rows2)
    write_drop3(args.out / DROP3, rows3)
    (args.out / PREF_DIR).mkdir(exist_ok=True)
    write_preferences(args.out / PREF_DIR / PREF_DROP, pref_rows)

    print(f"seed={args.seed} -> {args.out}")
    print(summarize([(DROP1, rows1), (DROP2, rows2), (DROP3, rows3)]))
    print()
    print(summarize_preferences(pref_rows))


if __name__ == "__main__":
    main()
