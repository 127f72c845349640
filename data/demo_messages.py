"""Build one demo support message and its answer from the pieces in demo_templates.py: `Generator.record`
makes a fresh message (unique up to case, whitespace and trailing punctuation), `Generator.near_duplicate`
a copy with one such change. All randomness comes from the generator's one `random.Random(seed)`."""

import json
import random
import re

from demo_templates import (
    BOTH_SENTENCES,
    CARD_SENTENCES,
    CARDS,
    CORES,
    EMAIL_DOMAINS,
    EMAIL_SENTENCES,
    FIRST_NAMES,
    GREETINGS,
    HIGH_CUES,
    IBAN_SENTENCES,
    IBANS,
    INTENTS,
    LAST_NAMES,
    LOW_CUES,
    MARK_RE,
    MONEY_INTENTS,
    ORDER_P,
    ORDER_SENTENCES,
    PHONE_SENTENCES,
    PRODUCTS,
    SIGNOFFS,
    TRAILING_PUNCT,
    URGENCY_WEIGHTS,
)


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
    f, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    local = rng.choice([f"{f}.{last}", f"{f}{last}{rng.randint(1, 99)}", f"{f[0]}.{last}", f"{f}_{last}"])
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
        ts = (f"2026-01-{rng.randint(10, 28):02d}T{sec // 3600 % 24:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}"
              f".{rng.randint(0, 999):03d}Z")
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
                extras.append(rng.choice(BOTH_SENTENCES).replace("{e}", mark(_email(rng)))
                              .replace("{t}", mark(_phone(rng))))
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
