"""Helpers for passes over many rows."""

from __future__ import annotations

import gc
from contextlib import contextmanager
from itertools import islice
from typing import Iterable, Iterator


@contextmanager
def no_cycle_gc():
    """Pause Python's cyclic garbage collector for the block. A pass over a drop allocates millions of small
    dicts, lists and strings that form no reference cycles (reference counting frees them), yet each allocation
    counts towards the collector's next run, and every full run walks every live object: on a 400k-row drop that
    was a quarter of the cleaning time (bench/bench_data.py). Nested blocks leave it to the outermost."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def batches(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of `size` items (the last may be shorter)."""
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


CHUNK = 4096  # texts joined at once: bounds the joined copies (4 bytes a character once one text has an emoji)


def chunked(fn):
    """Apply a batch function to a long list a chunk at a time: the same result, bounded memory."""
    def run(texts: list, *args):
        if len(texts) <= CHUNK:
            return fn(texts, *args)
        return [x for i in range(0, len(texts), CHUNK) for x in fn(texts[i:i + CHUNK], *args)]
    run.__doc__ = fn.__doc__
    return run
