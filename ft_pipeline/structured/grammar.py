"""JSON Schemas enforced with llguidance: each step, a row with a grammar may pick only the tokens that keep
its text a prefix of a document the schema accepts, and the end-of-sequence token once the document is whole.

`Grammars` belongs to one loaded tokenizer: llguidance's view of its vocabulary is built once, and compiled
grammars are kept by schema hash (a fresh matcher per request is a cheap copy of the cached one). Compiling
happens in whatever thread calls `matcher` (a server's request thread), never in the generation loop.
`GrammarMask` is the transformers logits processor: one matcher per row, None for a free row."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

import numpy as np
import torch
from transformers import LogitsProcessor

from ft_pipeline.structured.formats import FormatError, ResponseFormat

log = logging.getLogger("ft_pipeline.structured")

# No free whitespace in the document (a small model can loop on spaces otherwise): compact JSON, or the fixed
# separators a model was taught (Grammars' `separators`); oneOf taken as anyOf (the first branch that matches),
# as OpenAI's and vLLM's engines do.
JSON_OPTIONS = {"whitespace_flexible": False, "coerce_one_of": True}


class Grammars:
    """llguidance's tokenizer for one HF tokenizer and the grammars compiled against it (LRU, by schema hash)."""

    def __init__(self, tokenizer, vocab_size: int | None = None, eos_token_id: int | None = None, keep: int = 128,
                 separators: dict | None = None):
        import llguidance.hf

        self.eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        # the mask's width is the model's logits width (model.config.vocab_size), which may exceed the tokenizer's
        self.vocab_size = max(vocab_size or 0, len(tokenizer))
        self.ll_tok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=self.vocab_size, eos_token=self.eos)
        self.keep = keep
        # How this model writes JSON ({"item_separator", "key_separator"}, e.g. its registered schema's
        # x-guidance): the default for every schema compiled here; a schema's own x-guidance still wins.
        self.separators = dict(separators or {})
        self._cache: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self.compile_s: dict[str, float] = {}

    def matcher(self, fmt: ResponseFormat):
        """A fresh matcher for `fmt` (None for text); FormatError when the schema does not compile."""
        if not fmt.constrained:
            return None
        with self._lock:
            template = self._cache.get(fmt.key)
            if template is not None:
                self._cache.move_to_end(fmt.key)
        if template is None:
            template = self._compile(fmt)
            with self._lock:
                self._cache[fmt.key] = template
                while len(self._cache) > self.keep:
                    self._cache.popitem(last=False)
        return template.deep_copy()

    def _compile(self, fmt: ResponseFormat):
        from llguidance import LLMatcher

        t0 = time.perf_counter()
        # strict: false is best effort (unknown keywords ignored); strict: true was checked against the subset
        options = {**JSON_OPTIONS, **self.separators, "lenient": not fmt.strict and fmt.type == "json_schema"}
        try:
            grammar = LLMatcher.grammar_from_json_schema(fmt.schema, defaults=options)
        except ValueError as e:
            raise FormatError(f"the schema is not valid JSON Schema: {e}") from None
        m = LLMatcher(self.ll_tok, grammar, log_level=0)  # drops the GIL while it compiles
        if m.is_error():
            raise FormatError(f"Invalid schema for response_format '{fmt.name or fmt.type}': {m.get_error()}")
        m.compute_bitmask()  # the first mask is the costliest: paid here, in the caller's thread
        if m.is_error():
            raise FormatError(f"Invalid schema for response_format '{fmt.name or fmt.type}': {m.get_error()}")
        self.compile_s[fmt.key] = time.perf_counter() - t0
        return m


def unpack(bitmask: bytes, width: int) -> np.ndarray:
    """llguidance's packed mask (bit i of the little-endian words = token i allowed) as `width` booleans."""
    bits = np.unpackbits(np.frombuffer(bitmask, dtype=np.uint8), bitorder="little")
    if len(bits) < width:
        bits = np.concatenate([bits, np.zeros(width - len(bits), dtype=np.uint8)])
    return bits[:width].astype(bool)


class GrammarMask(LogitsProcessor):
    """Per-row constraint inside one `generate` call. Before each step it feeds every constrained row's matcher
    the token that row chose last, then sets the logits of the tokens its grammar forbids to -inf. Rows with
    no matcher are untouched; a row `ended(row)` (stopped by a stopping criterion, so padded from now on) is
    never fed again; a matcher that is stopped or in error allows only end-of-sequence."""

    def __init__(self, matchers: list, eos: int, ended=None):
        self.matchers, self.eos = matchers, eos
        self.ended = ended or (lambda row: False)
        self.started = False
        self.mask_s = 0.0  # time spent feeding matchers and computing/applying masks
        self.steps = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        t0 = time.perf_counter()
        rows, masks = [], []
        for row, m in enumerate(self.matchers):
            if m is None or self.ended(row):
                continue
            if self.started and not m.is_stopped() and not m.is_error():
                token = int(input_ids[row, -1])
                if not m.consume_token(token):
                    log.warning("row %d: the grammar refused token %d: %s", row, token, m.get_error())
            rows.append(row)
            masks.append(None if m.is_stopped() or m.is_error() else m.compute_bitmask())
        self.started = True
        if rows:
            width = scores.shape[1]
            allowed = np.zeros((len(rows), width), dtype=bool)
            for i, bits in enumerate(masks):
                if bits is None:
                    allowed[i, self.eos] = True
                else:
                    allowed[i] = unpack(bits, width)
            index = torch.tensor(rows, device=scores.device)
            forbid = torch.from_numpy(~allowed).to(scores.device)
            scores[index] = scores[index].masked_fill(forbid, float("-inf"))
            self.steps += 1
        self.mask_s += time.perf_counter() - t0
        return scores
