"""Near-duplicate detection: MinHash signatures and LSH banding over word n-grams, for many examples at once.

The signatures are datasketch's MinHash, scheme "affine32" (each 32-bit shingle hash is pre-mixed with the
MurmurHash3 finalizer, then permuted by h -> a*h + b mod 2^32 with datasketch's seeded `a`, `b`), so they can be
handed to datasketch (`LeanMinHash`, `MinHashLSH`); a test checks them against `MinHash(hashfunc=...)` value for
value. What differs is the speed. datasketch hashes every shingle with SHA-1 and permutes one example at a time
in Python: a few thousand examples a second with its LSH index. Here words are hashed all at once (a polynomial
hash from prefix sums over the batch's bytes), n-grams are combined with numpy, the permutations run as one
(num_perm x shingles) matrix per slab of examples, and LSH banding and the candidate pairs' Jaccard estimates
are array operations, so that only pairs at or above the threshold go through a Python loop: about a hundred
thousand examples a second on one core, signatures included (`data.near_dup_rows_per_s` in bench/bench_data.py).
The band count and width (b, r) are datasketch's optimum for the threshold and num_perm, weighted for recall
(see `NearDupParams.bands`). Cleaning and the split sign a row's input (`input_side`: its system and user
messages) and pair only rows with the same answer key (data/keys.py): a row whose answer differs is never a
duplicate."""

from __future__ import annotations

import numpy as np

from ft_pipeline.data.lsh import NearDupParams

_MUL = 0x01000193  # FNV-1 32-bit prime: folds the n token hashes of a shingle into one
_FMIX32 = (16, 0x85EBCA6B, 13, 0xC2B2AE35, 16)
_BATCH_SHINGLES = 1 << 16  # rows of the (shingles x num_perm) matrix permuted at once: 16 MB at 64 perms


# Bytes that are part of words: ASCII letters and digits, and every byte of a non-ASCII character.
_KEEP = set(range(ord("a"), ord("z") + 1)) | set(range(ord("0"), ord("9") + 1)) | set(range(0x80, 0x100))
_TO_SPACE = bytes(b if b in _KEEP else 0x20 for b in range(256))


def normalized(messages: list[dict]) -> bytes:
    """The UTF-8 text an example is compared on: each message's role, then its content, casefolded, with every
    ASCII byte that is not a letter or digit (punctuation, underscore, whitespace) made a space. One bytes
    translation instead of a Unicode regex: 10-20x faster, and non-ASCII punctuation (an em dash) simply stays
    part of the word it touches."""
    return " ".join(f"{m['role']} {m['content']}" for m in messages).casefold().encode().translate(_TO_SPACE)


def input_side(messages: list[dict]) -> list[dict]:
    """The messages a row's input is, what "near" is measured on: all but the assistant's (system and user)."""
    return [m for m in messages if m["role"] != "assistant"]


def tokens(messages: list[dict]) -> list[bytes]:
    return normalized(messages).split()


_P = 0x100000001B3  # odd, so invertible mod 2^64: word hashes come from prefix sums (see _word_hashes)
_P_INV = pow(_P, -1, 1 << 64)
_FMIX64 = (33, 0xFF51AFD7ED558CCD, 33, 0xC4CEB9FE1A85EC53, 33)
_M64 = (1 << 64) - 1


def _fmix64_int(h: int) -> int:
    s1, m1, s2, m2, s3 = _FMIX64
    h ^= h >> s1
    h = (h * m1) & _M64
    h ^= h >> s2
    h = (h * m2) & _M64
    return h ^ (h >> s3)


def word_hash(word: bytes) -> int:
    """32-bit hash of a word: the polynomial sum(byte_k * P^(len-1-k)) mod 2^64 of its UTF-8 bytes, mixed."""
    h = 0
    for byte in word:
        h = (h * _P + byte) & _M64
    return _fmix64_int(h) >> 32


def shingle_hash(word_hashes: list[int]) -> int:
    """The 32-bit hash of one n-gram from its words' hashes (the scalar form of what `signatures` vectorizes)."""
    h = word_hashes[0]
    for t in word_hashes[1:]:
        h = ((h * _MUL) & 0xFFFFFFFF) ^ t
    return h


def shingles(messages: list[dict], ngram: int) -> set[int]:
    """The shingle hashes of one example (an example shorter than `ngram` words is one shingle), one at a time:
    the reference `signatures` is tested against."""
    th = [word_hash(w) for w in tokens(messages)]
    if len(th) < ngram:
        return {shingle_hash(th)}
    return {shingle_hash(th[i:i + ngram]) for i in range(len(th) - ngram + 1)}


def _fmix32(h: np.ndarray) -> np.ndarray:
    s1, m1, s2, m2, s3 = _FMIX32
    h = h ^ (h >> np.uint32(s1))
    h = h * np.uint32(m1)
    h = h ^ (h >> np.uint32(s2))
    h = h * np.uint32(m2)
    return h ^ (h >> np.uint32(s3))


def _fmix64(h: np.ndarray) -> np.ndarray:
    s1, m1, s2, m2, s3 = (np.uint64(x) for x in _FMIX64)
    h = h ^ (h >> s1)
    h = h * m1
    h = h ^ (h >> s2)
    h = h * m2
    return h ^ (h >> s3)


def permutations(params: NearDupParams) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters for (num_perm, seed), generated the same way."""
    gen = np.random.RandomState(params.seed)
    a = gen.randint(0, 1 << 31, params.num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, params.num_perm, dtype=np.uint32)
    return a, b


class _Powers:
    """P^i and P^-i mod 2^64 for i < n, grown on demand (numpy's uint64 products wrap, which is the modulo)."""

    def __init__(self):
        self.p = self.q = np.ones(0, dtype=np.uint64)

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.p) < n:
            n2 = max(2 * n, 2 * len(self.p))
            with np.errstate(over="ignore"):
                self.p = np.cumprod(np.r_[np.uint64(1), np.full(n2 - 1, _P, dtype=np.uint64)], dtype=np.uint64)
                self.q = np.cumprod(np.r_[np.uint64(1), np.full(n2 - 1, _P_INV, dtype=np.uint64)], dtype=np.uint64)
        return self.p[:n], self.q[:n]


def _word_hashes(texts: list[bytes], powers: _Powers) -> tuple[np.ndarray, np.ndarray]:
    """(32-bit hash of every word of every text, in order; words per text), for normalized texts, at once:
    a word's polynomial hash is a difference of prefix sums of byte_k * P^-k, scaled by P^end."""
    buf = np.frombuffer(b" ".join(texts), dtype=np.uint8)  # the space keeps words from spanning two texts
    offsets = np.cumsum([0] + [len(t) + 1 for t in texts[:-1]])
    sep = buf == 32
    word = ~sep
    first = np.flatnonzero(word & np.concatenate(([True], sep[:-1])))
    last = np.flatnonzero(word & np.concatenate((sep[1:], [True])))
    p, q = powers.get(len(buf))
    with np.errstate(over="ignore"):
        prefix = np.cumsum(buf.astype(np.uint64) * q, dtype=np.uint64)
        before = np.where(first > 0, prefix[np.maximum(first - 1, 0)], np.uint64(0))
        h = (prefix[last] - before) * p[last]
    th = (_fmix64(h) >> np.uint64(32)).astype(np.uint32)
    doc = np.searchsorted(offsets, first, side="right") - 1
    return th, np.bincount(doc, minlength=len(texts)).astype(np.int64)


def signatures(examples, params: NearDupParams, batch: int = 4096) -> np.ndarray:
    """MinHash signatures (len(examples) x num_perm, uint32) of an iterable of message lists."""
    a, b = permutations(params)
    powers = _Powers()
    parts, pending = [], []
    for messages in examples:
        pending.append(normalized(messages))
        if len(pending) >= batch:
            parts.append(_signature_batch(*_word_hashes(pending, powers), params.ngram, a, b))
            pending = []
    if pending or not parts:
        parts.append(_signature_batch(*_word_hashes(pending, powers), params.ngram, a, b))
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _signature_batch(flat: np.ndarray, counts: np.ndarray, n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty((len(counts), len(a)), dtype=np.uint32)
    if not len(counts):
        return out
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    # Every position p starts the n-gram flat[p:p+n]; it is a shingle of its example when it fits inside it.
    sh = flat.copy()
    for k in range(1, n):
        nxt = np.zeros_like(flat)
        nxt[:-k] = flat[k:]
        sh = (sh * np.uint32(_MUL)) ^ nxt
    pos = np.arange(len(flat)) - np.repeat(starts, counts)
    valid = pos <= np.repeat(counts - n, counts)
    for i in np.flatnonzero(counts < n):  # fewer than n words: one shingle of all of them
        sh[starts[i]] = shingle_hash(flat[starts[i]:starts[i] + counts[i]].tolist())
        valid[starts[i]] = True
    sh = _fmix32(sh[valid])
    n_sh = np.maximum(counts - n + 1, 1)
    sh_starts = np.concatenate(([0], np.cumsum(n_sh)))
    # Permute in slabs of whole examples so the (shingles x num_perm) matrix stays small.
    i = 0
    while i < len(counts):
        j = int(np.searchsorted(sh_starts, sh_starts[i] + _BATCH_SHINGLES, side="right")) - 1
        j = min(max(j, i + 1), len(counts))
        lo, hi = sh_starts[i], sh_starts[j]
        # (num_perm x shingles), reduced along the contiguous axis: ~10x faster than the transposed layout.
        phv = a[:, None] * sh[None, lo:hi]
        phv += b[:, None]
        out[i:j] = np.minimum.reduceat(phv, sh_starts[i:j] - lo, axis=1).T
        i = j
    return out

