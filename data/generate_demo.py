#!/usr/bin/env python3
"""Generate the demo "data drops" for the support-message extraction task.

The model is fine-tuned to turn a customer-support message into strict JSON:

    {"intent": ..., "product": ..., "order_id": ..., "urgency": ...}

Three drops in three export formats are written to ``data/raw/``:

  * ``2026-01-support_chat.jsonl``  OpenAI chat format, one object per line
  * ``2026-02-helpdesk_alpaca.json`` Alpaca records, one JSON array
  * ``2026-03-tickets.csv``          CSV with header ``prompt,completion``

Each drop carries a fixed, counted amount of the mess real exports have
(duplicates, near duplicates, empty answers, malformed lines, wrong roles,
over-long rows, personal data).  See ``data/README.md``.

Standard library only.  Deterministic: the same seed gives byte-identical
files.  Usage::

    python data/generate_demo.py            # seed 7, writes data/raw/
    python data/generate_demo.py --seed 11 --out /tmp/raw
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import random
import re
from pathlib import Path

DEFAULT_SEED = 7
INSTRUCTION = "Extract intent, product, order_id and urgency as JSON."

DROP1 = "2026-01-support_chat.jsonl"
DROP2 = "2026-02-helpdesk_alpaca.json"
DROP3 = "2026-03-tickets.csv"

# ---------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------

PRODUCTS = [
    "Aurora X2 headphones",
    "Nimbus 5 laptop",
    "Pulse smartwatch",
    "Vega mini speaker",
    "Zephyr air purifier",
    "Halo smart bulb",
    "Terra fitness band",
    "Lumen 4K webcam",
    "Echo-Go power bank",
    "Stratus 11 tablet",
    "Nova e-reader",
]

INTENTS = [
    "refund",
    "cancel_order",
    "shipping_status",
    "damaged_item",
    "billing_issue",
    "account_access",
    "product_question",
    "return_request",
]

# "{p}" is the product.  No template may contain an urgency cue word.
CORES = {
    "refund": [
        "I'd like a refund for my {p}.",
        "Please refund the {p} I bought.",
        "Can I get my money back for the {p}?",
        "I want a full refund on the {p}, it's not what I expected.",
        "Requesting a refund for the {p}.",
        "How do I get refunded for my {p}?",
        "The {p} didn't work out for me, please issue a refund.",
        "I was promised a refund for the {p} and haven't seen it yet.",
        "Could you refund me for the {p}? I don't need it anymore.",
        "I need my money back for the {p}.",
    ],
    "cancel_order": [
        "Please cancel my order for the {p}.",
        "I want to cancel the {p} I ordered.",
        "Can you cancel my {p} order before it ships?",
        "I ordered the {p} by mistake, please cancel it.",
        "Cancel the {p} please, I changed my mind.",
        "How do I cancel an order for the {p}?",
        "I need to cancel my {p} purchase.",
        "Don't ship the {p}, I'd like to cancel.",
        "Is it too late to cancel the {p}?",
    ],
    "shipping_status": [
        "Where is my {p}?",
        "My {p} hasn't arrived yet, can you check the status?",
        "Any update on when the {p} will ship?",
        "Tracking for my {p} hasn't updated in a week.",
        "Can you tell me when my {p} will be delivered?",
        "The {p} was supposed to arrive on Monday and it's still not here.",
        "Has my {p} shipped yet?",
        "What's the delivery status of the {p}?",
        "I'm still waiting on the {p}, where is it?",
    ],
    "damaged_item": [
        "My {p} arrived broken.",
        "The {p} arrived with a crack in the casing.",
        "The box was crushed and the {p} inside is damaged.",
        "My {p} was damaged in shipping.",
        "The {p} I received is scratched and dented.",
        "Got the {p} today but it's smashed.",
        "The {p} showed up in pieces.",
        "There's a big dent in the {p} I just got.",
        "My new {p} came damaged, what can you do?",
    ],
    "billing_issue": [
        "I was charged twice for the {p}.",
        "There's an extra charge on my card for the {p}.",
        "The price I paid for the {p} doesn't match the receipt.",
        "I got billed for a {p} I never ordered.",
        "My invoice for the {p} is wrong.",
        "Why was I charged a subscription fee for the {p}?",
        "The discount code didn't apply to my {p} purchase and I was overcharged.",
        "I see two payments for the {p} on my statement.",
        "I was charged tax twice on the {p}.",
    ],
    "account_access": [
        "I can't log in to my account to register my {p}.",
        "I'm locked out of the app for my {p}.",
        "Password reset emails never arrive, so I can't manage my {p}.",
        "My account got locked after I set up the {p}.",
        "I can't sign in to the {p} companion app.",
        "The two-factor code isn't working and I can't reach my {p} settings.",
        "I forgot my password and can't see the warranty for my {p}.",
        "My login stopped working since I paired the {p}.",
        "Can't get into my account since I added the {p}.",
    ],
    "product_question": [
        "Does the {p} work with Android phones?",
        "What's the battery life on the {p}?",
        "Is the {p} waterproof?",
        "Can the {p} be used while charging?",
        "Does the {p} come with a warranty?",
        "Which charger do I need for the {p}?",
        "Is there a newer version of the {p} coming out?",
        "How do I update the firmware on my {p}?",
        "Is the {p} compatible with Bluetooth 5.3?",
    ],
    "return_request": [
        "I'd like to return the {p}.",
        "How do I send back my {p}?",
        "Can I get a return label for the {p}?",
        "I want to return the {p} and get a different color.",
        "The {p} doesn't fit my needs, I want to return it.",
        "Is the {p} still within the return window?",
        "I need to return the {p}, it was a gift I don't need.",
        "Please start a return for my {p}.",
        "Where do I drop off the {p} for a return?",
    ],
}

# Probability that a message of this intent mentions an order id (~75% overall).
ORDER_P = {i: 0.85 for i in INTENTS}
ORDER_P["account_access"] = 0.45
ORDER_P["product_question"] = 0.45

# "{o}" is the order id.
ORDER_SENTENCES = [
    "Order {o}.",
    "Order number: {o}.",
    "My order is {o}.",
    "It was order {o}.",
    "Order id {o}.",
    "This is about order {o}.",
    "order #{o}",
    "ref {o}",
    "Order {o}, placed last week.",
]

GREETINGS = [
    "Hi,", "Hello,", "Hey there,", "Hi team,", "Good morning,",
    "Hello support,", "hey", "Hi there!", "Dear support,",
]
SIGNOFFS = [
    "Thanks.", "Thank you!", "Thanks, Sam", "Cheers", "Regards, Priya",
    "thx", "Thanks in advance \U0001f64f", "\u2014 Marco", "Best, Jo",
]

# (text, position) -- position "pre" goes before the request, "post" after.
HIGH_CUES = [
    ("This is urgent.", "post"),
    ("URGENT:", "pre"),
    ("Please sort this asap.", "post"),
    ("I need this fixed immediately.", "post"),
    ("I need help right now.", "post"),
    ("Urgent please!", "post"),
    ("asap please", "post"),
    ("Please reply immediately,", "pre"),
]
LOW_CUES = [
    ("No rush.", "post"),
    ("no rush on this", "post"),
    ("Reply when you get a chance.", "post"),
    ("Whenever you can.", "post"),
    ("whenever is fine", "post"),
    ("When you get a chance,", "pre"),
    ("No rush, just curious.", "post"),
]
URGENCY_WEIGHTS = [("low", 0.25), ("medium", 0.5), ("high", 0.25)]

FIRST_NAMES = ["jane", "omar", "li", "maria", "tom", "aisha", "lukas", "nina", "raj", "sofia", "kenji", "emma"]
LAST_NAMES = ["doe", "haddad", "chen", "garcia", "baker", "okafor", "weber", "novak", "patel", "rossi", "sato", "smith"]
EMAIL_DOMAINS = ["example.com", "example.org", "example.net"]

EMAIL_SENTENCES = ["You can email me at {e}.", "My email is {e}", "Reach me at {e}.", "email: {e}"]
PHONE_SENTENCES = ["Call me on {t}.", "My number is {t}.", "Text {t} if that's easier.", "phone {t}"]
BOTH_SENTENCES = ["Contact: {e} / {t}", "You can reach me at {e} or {t}."]

# Well-known test card numbers and example IBANs (not real accounts).
CARDS = ["4111 1111 1111 1111", "5555 5555 5555 4444", "4012 8888 8888 1881",
         "4242 4242 4242 4242", "5105 1051 0510 5100"]
CARD_SENTENCES = ["I paid with card {c}.", "The charge was on card {c}.", "card number {c} if you need it"]
IBANS = ["DE89 3704 0044 0532 0130 00", "GB82 WEST 1234 5698 7654 32", "FR14 2004 1010 0505 0001 3M02 606"]
IBAN_SENTENCES = ["My IBAN is {i} in case you need it.", "Bank details: IBAN {i}"]
MONEY_INTENTS = ["refund", "billing_issue", "cancel_order", "return_request"]

PLAIN_TEXT_LINES = ["--- export page 3 of 7 (agent-7, 2026-01-19) ---"]

TRAILING_PUNCT = ".!?\u2026 \t\n"

# Protected spans (product, order id, PII, logs) are replaced by \x00<n>\x00
# markers while casing/whitespace/punctuation transforms run, so they always
# appear verbatim in the final message.
MARK_RE = re.compile(r"(\x00\d+\x00)")


# ---------------------------------------------------------------------------
# Message construction
# ---------------------------------------------------------------------------

class Record:
    """One example: a message template with protected spans, plus its labels."""

    def __init__(self, template, protected, answer, meta):
        self.template = template
        self.protected = protected
        self.answer = answer
        self.meta = meta

    def render(self, template=None):
        t = self.template if template is None else template
        return MARK_RE.sub(lambda m: self.protected[int(m.group(1)[1:-1])], t)

    @property
    def message(self):
        return self.render()


def _map_text(template, fn):
    """Apply fn to the unprotected segments of a template."""
    return "".join(s if MARK_RE.fullmatch(s) else fn(s) for s in MARK_RE.split(template))


def _first_letter(template, fn):
    """Apply fn to the first letter outside protected spans."""
    out, done = [], False
    for s in MARK_RE.split(template):
        if not done and not MARK_RE.fullmatch(s):
            for i, ch in enumerate(s):
                if ch.isalpha():
                    s = s[:i] + fn(ch) + s[i + 1:]
                    done = True
                    break
        out.append(s)
    return "".join(out)


def norm_key(msg):
    """Key under which near duplicates collide: case, whitespace, trailing punctuation."""
    return re.sub(r"\s+", " ", msg.lower()).strip().rstrip(TRAILING_PUNCT)


def _email(rng):
    f, l = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    local = rng.choice([f"{f}.{l}", f"{f}{l}{rng.randint(1, 99)}", f"{f[0]}.{l}", f"{f}_{l}"])
    return f"{local}@{rng.choice(EMAIL_DOMAINS)}"


def _phone(rng):
    n = rng.randint(100, 199)  # 555-0100..0199 is reserved for fiction
    return rng.choice([
        f"+1 415-555-0{n}",
        f"(212) 555-0{n}",
        f"646.555.0{n}",
        f"+1 (312) 555-0{n}",
        f"+44 20 7946 0{n}",  # Ofcom drama range
    ])


def _log_block(rng, min_chars):
    services = ["sync", "auth", "ble", "fw-update", "net", "battery", "ui"]
    levels = ["INFO", "INFO", "INFO", "WARN", "ERROR", "DEBUG"]
    events = [
        "retrying request id={h} attempt={a} status=503",
        "connection dropped after {a}s, reconnecting",
        "checksum mismatch on block {a} (expected {h})",
        "token refresh failed code=401 trace={h}",
        "queue depth={a} worker={h}",
        "firmware chunk {a}/64 written",
        "heartbeat ok rssi=-{a}dBm",
        "unhandled exception in handler {h}: timeout",
    ]
    lines, total = ["----- BEGIN DEVICE LOG -----"], 0
    sec = rng.randint(0, 3000)
    while total < min_chars:
        sec += rng.randint(1, 9)
        ts = f"2026-01-{rng.randint(10, 28):02d}T{sec // 3600 % 24:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}.{rng.randint(0, 999):03d}Z"
        ev = rng.choice(events).format(h=f"{rng.getrandbits(32):08x}", a=rng.randint(1, 99))
        line = f"{ts} [{rng.choice(services)}] {rng.choice(levels)} {ev}"
        lines.append(line)
        total += len(line) + 1
    lines.append("----- END DEVICE LOG -----")
    return "\n".join(lines)


class Generator:
    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.seen_keys = set()

    def answer(self, intent, product, order_id, urgency):
        return json.dumps({"intent": intent, "product": product, "order_id": order_id, "urgency": urgency})

    def record(self, intent=None, money_pii=None, long_log=False, allow_pii=True):
        """Make a fresh record whose message is unique (also up to norm_key)."""
        for _ in range(1000):
            rec = self._try_record(intent, money_pii, long_log, allow_pii)
            k = norm_key(rec.message)
            if k not in self.seen_keys:
                self.seen_keys.add(k)
                return rec
        raise RuntimeError("could not make a unique message")

    def _try_record(self, intent, money_pii, long_log, allow_pii):
        rng = self.rng
        if money_pii:
            intent = intent or rng.choice(MONEY_INTENTS)
        intent = intent or rng.choice(INTENTS)
        product = rng.choice(PRODUCTS)
        order_id = f"ORD-{rng.randint(100000, 999999)}" if rng.random() < ORDER_P[intent] else None
        r, urgency = rng.random(), "medium"
        acc = 0.0
        for u, w in URGENCY_WEIGHTS:
            acc += w
            if r < acc:
                urgency = u
                break

        protected = []

        def mark(value):
            protected.append(value)
            return f"\x00{len(protected) - 1}\x00"

        meta = {"intent": intent, "urgency": urgency, "email": False, "phone": False,
                "card": False, "iban": False, "long": long_log}

        core = rng.choice(CORES[intent]).replace("{p}", mark(product))
        pre, post = [], []
        if order_id is not None:
            osent = rng.choice(ORDER_SENTENCES).replace("{o}", mark(order_id))
            (pre if rng.random() < 0.3 else post).append(osent)
        body = pre + [core] + post

        if urgency != "medium":
            text, pos = rng.choice(HIGH_CUES if urgency == "high" else LOW_CUES)
            if pos == "pre":
                body.insert(0, text)
            else:
                body.append(text)

        extras = []
        if allow_pii and rng.random() < 0.10:
            kind = rng.choices(["email", "phone", "both"], [0.45, 0.35, 0.20])[0]
            if kind == "email":
                extras.append(rng.choice(EMAIL_SENTENCES).replace("{e}", mark(_email(rng))))
            elif kind == "phone":
                extras.append(rng.choice(PHONE_SENTENCES).replace("{t}", mark(_phone(rng))))
            else:
                extras.append(rng.choice(BOTH_SENTENCES).replace("{e}", mark(_email(rng))).replace("{t}", mark(_phone(rng))))
            meta["email"] = kind in ("email", "both")
            meta["phone"] = kind in ("phone", "both")
        if money_pii == "card":
            extras.append(rng.choice(CARD_SENTENCES).replace("{c}", mark(rng.choice(CARDS))))
            meta["card"] = True
        elif money_pii == "iban":
            extras.append(rng.choice(IBAN_SENTENCES).replace("{i}", mark(rng.choice(IBANS))))
            meta["iban"] = True

        text = " ".join(body + extras)
        if long_log:
            text += " Here's the full log from the device:\n" + mark(_log_block(rng, 6200))

        if rng.random() < 0.45:
            text = rng.choice(GREETINGS) + rng.choice([" ", " ", "\n"]) + text
        if rng.random() < 0.35:
            text = text + rng.choice([" ", "\n"]) + rng.choice(SIGNOFFS)

        # casing / punctuation style of the unprotected text
        s = rng.random()
        if s < 0.14:
            text = _map_text(text, str.lower)
        elif s < 0.18:
            text = _map_text(text, str.upper)
        elif s < 0.28:
            text = _first_letter(text, str.lower)
        p = rng.random()
        if p < 0.15:
            text = text.rstrip(".!")
        elif p < 0.20:
            text = text.rstrip(".") + "!!"
        elif p < 0.24 and text.endswith("?"):
            text = text + "??"

        return Record(text, protected, self.answer(intent, product, order_id, urgency), meta)

    # ---- near duplicates ---------------------------------------------------

    def near_duplicate(self, rec):
        """Same message with changed casing, whitespace or trailing punctuation."""
        rng = self.rng
        orig = rec.message
        kinds = ["case", "space", "punct"]
        rng.shuffle(kinds)
        for kind in kinds:
            t = rec.template
            if kind == "case":
                opts = [lambda x: _map_text(x, str.lower), lambda x: _map_text(x, str.upper),
                        lambda x: _first_letter(x, str.swapcase)]
                rng.shuffle(opts)
                cands = [f(t) for f in opts]
            elif kind == "space":
                if re.search(r"\s{2,}|\n", t):
                    cands = [_map_text(t, lambda x: re.sub(r"\s+", " ", x))]
                else:
                    def widen(x):
                        return "".join(c + (" " if c == " " and rng.random() < 0.4 else "") for c in x)
                    cands = [_map_text(t, widen) + rng.choice(["", " ", "  ", "\n"]),
                             rng.choice([" ", "  "]) + t + " "]
            else:
                stripped = t.rstrip(".!?")
                cands = [stripped + e for e in rng.sample(["", ".", "!", "!!", "?", "..."], 6)]
            for c in cands:
                new = rec.render(c)
                if new != orig and norm_key(new) == norm_key(orig):
                    meta = dict(rec.meta, near_kind=kind)
                    return Record(c, rec.protected, rec.answer, meta)
        raise RuntimeError("no near duplicate possible for %r" % orig)


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
        ("  - casing changed", lambda rows: sum(r["kind"] == "near_dup" and r["rec"].meta["near_kind"] == "case" for r in rows)),
        ("  - whitespace changed", lambda rows: sum(r["kind"] == "near_dup" and r["rec"].meta["near_kind"] == "space" for r in rows)),
        ("  - trailing punctuation changed", lambda rows: sum(r["kind"] == "near_dup" and r["rec"].meta["near_kind"] == "punct" for r in rows)),
        ("empty / missing answer", lambda rows: sum(r["kind"] == "empty_answer" for r in rows)),
        ('  - content "" ', lambda rows: sum(r["kind"] == "empty_answer" and r["empty"] == "" for r in rows)),
        ('  - whitespace only ("   ")', lambda rows: sum(r["kind"] == "empty_answer" and r["empty"] == "   " for r in rows)),
        ("  - assistant turn missing", lambda rows: sum(r["kind"] == "empty_answer" and r["empty"] is None for r in rows)),
        ("malformed lines", lambda rows: sum(r["kind"] == "malformed" for r in rows)),
        ("  - truncated JSON", lambda rows: sum(r["kind"] == "malformed" and "plain" not in r for r in rows)),
        ("  - plain text, not JSON", lambda rows: sum(r["kind"] == "malformed" and "plain" in r for r in rows)),
        ("wrong roles (human/bot)", lambda rows: sum(r["kind"] == "wrong_role" for r in rows)),
        ("over-long rows (user msg >= 6,000 chars)", lambda rows: sum(r["kind"] == "over_long" for r in rows)),
        ("rows with a system message", lambda rows: sum(bool(r.get("system")) and "plain" not in r for r in rows)),
        ("rows with an email address", lambda rows: sum(bool(r["rec"] and r["rec"].meta["email"]) for r in rows)),
        ("rows with a phone number", lambda rows: sum(bool(r["rec"] and r["rec"].meta["phone"]) for r in rows)),
        ("rows with email and/or phone", lambda rows: sum(bool(r["rec"] and (r["rec"].meta["email"] or r["rec"].meta["phone"])) for r in rows)),
        ("rows with a payment card number", lambda rows: sum(bool(r["rec"] and r["rec"].meta["card"]) for r in rows)),
        ("rows with an IBAN", lambda rows: sum(bool(r["rec"] and r["rec"].meta["iban"]) for r in rows)),
        ("answers present", lambda rows: sum(r["kind"] not in ("empty_answer", "malformed") for r in rows)),
        ("  - of which order_id is null", lambda rows: sum(r["kind"] not in ("empty_answer", "malformed")
                                                           and json.loads(r["answer"])["order_id"] is None for r in rows)),
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

    args.out.mkdir(parents=True, exist_ok=True)
    write_drop1(args.out / DROP1, rows1)
    write_drop2(args.out / DROP2, rows2)
    write_drop3(args.out / DROP3, rows3)

    print(f"seed={args.seed} -> {args.out}")
    print(summarize([(DROP1, rows1), (DROP2, rows2), (DROP3, rows3)]))


if __name__ == "__main__":
    main()
