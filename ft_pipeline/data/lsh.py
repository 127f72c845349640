"""LSH over MinHash signatures (data/near_dup.py): band keys, and the pairs of examples that share a band key with
an estimated Jaccard similarity at or above the threshold, found with array operations (`dedup`, within one set
of examples; `cross_pairs`, between two). With `groups` (one 64-bit key per example: the pipeline passes its
answer key) only examples of the same group are paired: the group is mixed into every band key, so that rows with
different answers never even become candidates, and a pair is checked to have equal groups."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class NearDupParams:
    """Two examples are near-duplicates when the estimated Jaccard similarity of their sets of word n-grams
    (case, punctuation and whitespace ignored; roles included) is at least `threshold`."""

    threshold: float = 0.8
    num_perm: int = 64  # more permutations: a more precise estimate, proportionally slower
    ngram: int = 2  # word n-grams; 2 keeps a one-word edit of a short example above 0.8
    seed: int = 1

    def __post_init__(self):
        if not 0 < self.threshold <= 1:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {self.threshold}")
        if self.num_perm < 2 or self.ngram < 1:
            raise ValueError(f"num_perm must be >= 2 and ngram >= 1, got {self.num_perm} and {self.ngram}")

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def bands(self) -> tuple[int, int]:
        """(b, r): b bands of r hash values, datasketch's optimum for this threshold and num_perm with false
        negatives weighted 0.95 and false positives 0.05. Its default (0.5, 0.5) finds a pair at exactly the
        threshold only a third of the time (b=5, r=11 at 0.8 and 64 permutations); a missed near-duplicate is a
        leak into the holdout, while a false candidate only costs one comparison of two signatures. With
        (0.05, 0.95): b=10, r=6, a pair at 0.8 is a candidate with probability 0.95, at 0.85 with 0.99."""
        return _bands(self.threshold, self.num_perm)


@functools.lru_cache(maxsize=None)
def _bands(threshold: float, num_perm: int, fp_weight: float = 0.05, fn_weight: float = 0.95) -> tuple[int, int]:
    """datasketch's `_optimal_param` (the (b, r) minimizing the weighted areas of false positives below the
    threshold and false negatives above it), with the integrals done on a numpy grid instead of scipy's `quad`:
    importing scipy and 400 `quad` calls cost about a second in every process that splits. A test checks the
    choice equals datasketch's."""
    best, opt = float("inf"), (0, 0)
    lo, hi = np.linspace(0.0, threshold, 2001), np.linspace(threshold, 1.0, 2001)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(1 - (1 - lo ** r) ** b, lo)
            fn = np.trapezoid((1 - hi ** r) ** b, hi)
            err = fp * fp_weight + fn * fn_weight
            if err < best:
                best, opt = err, (b, r)
    return opt


def band_keys(sig: np.ndarray, params: NearDupParams, groups: np.ndarray | None = None) -> np.ndarray:
    """One 64-bit key per (example, band): equal when the band's r hash values (and the examples' groups) are
    equal (up to a 2^-64 collision, which only adds a candidate that the checks then reject)."""
    nb, r = params.bands
    keys = np.empty((len(sig), nb), dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    for j in range(nb):
        k = np.full(len(sig), 0xCBF29CE484222325, dtype=np.uint64)
        if groups is not None:
            k ^= groups
            k *= prime
        for c in range(j * r, (j + 1) * r):  # in place, one column at a time: no uint64 copy of `sig`
            k ^= sig[:, c]
            k *= prime
        keys[:, j] = k
    return keys


def _shared(keys: np.ndarray) -> np.ndarray:
    """Mask (example, band): True where another example has the same key in that band."""
    shared = np.zeros(keys.shape, dtype=bool)
    for j in range(keys.shape[1]):
        col = keys[:, j]
        order = np.argsort(col, kind="stable")
        sc = col[order]
        eq = sc[1:] == sc[:-1]
        hit = np.zeros(len(col), dtype=bool)
        hit[1:] |= eq
        hit[:-1] |= eq
        shared[order, j] = hit
    return shared


def jaccard(sig: np.ndarray, i, j) -> np.ndarray:
    """Estimated Jaccard similarity: the share of equal MinHash values."""
    return (sig[i] == sig[j]).mean(axis=-1)


MAX_CANDIDATE_PAIRS = 1 << 26  # more candidate pairs than this (tens of seconds of work): dedup loops instead
_PAIR_CHUNK = 1 << 16  # pairs compared at once: (chunk x num_perm) uint32 gathered twice, 32 MB at 64 perms
_PAIR_SLICE = 1 << 22  # pairs listed at once: a few int64 arrays of this length, about 200 MB


def dedup(sig: np.ndarray, params: NearDupParams, max_pairs: int = MAX_CANDIDATE_PAIRS,
          groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy, in order: an example is a near-duplicate of the earliest earlier *kept* example (of its group,
    when `groups` are given) that is an LSH candidate with estimated Jaccard >= threshold; otherwise it is
    kept. Returns (duplicate_of, similarity): the index of that kept example (-1 when kept) and the estimate.
    The result for the first k examples does not depend on what follows them, which is what makes appending
    data safe.

    Every candidate pair (two examples sharing a band key) has its Jaccard estimate computed with array
    operations, a band and a slice of its buckets at a time; only the pairs at or above the threshold, a few
    per near-duplicate, go through the greedy loop in Python. When buckets are so large that there are more
    than `max_pairs` pairs, or one bucket alone holds thousands of examples, it falls back to `_dedup_loop`,
    which compares each example with the kept examples of its buckets only. Both give the same result (a test
    checks it)."""
    n = len(sig)
    dup_of = np.full(n, -1, dtype=np.int64)
    sim = np.zeros(n, dtype=np.float32)
    if n < 2:
        return dup_of, sim
    keys = band_keys(sig, params, groups)
    hits = _similar_pairs(sig, keys, params, max_pairs, groups)
    if hits is None:
        return _dedup_loop(sig, keys, params, groups)
    later, earlier, est = hits
    # By (later, earlier): an earlier example is decided before any later one looks at it, and the first kept
    # `earlier` of each example is the one it duplicates. A pair found in several bands is seen again: no-op.
    for i, j, s in zip(later.tolist(), earlier.tolist(), est.tolist()):
        if dup_of[i] < 0 and dup_of[j] < 0:
            dup_of[i], sim[i] = j, s
    return dup_of, sim


def _similar_pairs(sig: np.ndarray, keys: np.ndarray, params: NearDupParams, max_pairs: int,
                   groups: np.ndarray | None = None):
    """(later, earlier, estimate) of every pair of examples sharing a key in some band whose estimated Jaccard
    is >= threshold, sorted by (later, earlier), a pair found in several bands once per band; None when there
    are more than `max_pairs` candidate pairs in all, or one bucket alone has more than _PAIR_SLICE (about 2900
    examples sharing a band key)."""
    n, num_perm = sig.shape
    threshold, (nb, r) = params.threshold, params.bands
    need = next(c for c in range(num_perm + 1) if c / num_perm >= threshold)  # equal values a hit needs
    # A pair with `need` equal values of num_perm has at least need - (num_perm - q) equal among any q columns:
    # pairs below that are rejected on a quarter of the columns (most candidate pairs are chance collisions of
    # one band). The q columns are the first or the last ones, whichever misses the band: its r are all equal.
    q = num_perm // 4
    heads = (np.ascontiguousarray(sig[:, :q]), np.ascontiguousarray(sig[:, -q:]))
    head_need = need - (num_perm - q)
    found, total = [], 0
    for j in range(nb):
        head = heads[0] if j * r >= q else heads[1]
        order = np.argsort(keys[:, j])
        sk = keys[order, j]
        starts = np.flatnonzero(np.concatenate(([True], sk[1:] != sk[:-1])))
        sizes = np.diff(np.append(starts, n))
        starts, sizes = starts[sizes > 1], sizes[sizes > 1]
        pairs = sizes * (sizes - 1) // 2
        total += int(pairs.sum())
        if total > max_pairs or (len(pairs) and pairs.max() > _PAIR_SLICE):
            return None
        # Groups a slice at a time, so that the pair arrays stay under _PAIR_SLICE pairs whatever the band.
        cum, lo = np.cumsum(pairs), 0
        while lo < len(sizes):
            hi = int(np.searchsorted(cum, (cum[lo - 1] if lo else 0) + _PAIR_SLICE, side="right"))
            st, sz, lo = starts[lo:hi], sizes[lo:hi], hi
            # Every pair of positions in a group: the member at offset k >= 1 with each of the k before it.
            member = _ragged_arange(sz - 1) + np.repeat(st + 1, sz - 1)
            k = member - np.repeat(st, sz - 1)
            a = order[np.repeat(member, k)]
            b = order[_ragged_arange(k) + np.repeat(member - k, k)]
            later, earlier = np.maximum(a, b), np.minimum(a, b)
            for c in range(0, len(later), _PAIR_CHUNK):
                li, ei = later[c:c + _PAIR_CHUNK], earlier[c:c + _PAIR_CHUNK]
                if groups is not None:
                    same = groups[li] == groups[ei]
                    li, ei = li[same], ei[same]
                if head_need > 0:
                    maybe = np.count_nonzero(head[li] == head[ei], axis=1) >= head_need
                    li, ei = li[maybe], ei[maybe]
                est = np.count_nonzero(sig[li] == sig[ei], axis=1) / num_perm  # the float jaccard() computes
                ok = est >= threshold
                found.append((li[ok], ei[ok], est[ok]))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    later, earlier, est = (np.concatenate(x) for x in zip(*found))
    by = np.lexsort((earlier, later))
    return later[by], earlier[by], est[by]


def _ragged_arange(counts: np.ndarray) -> np.ndarray:
    """0 .. c-1 for each c in counts, concatenated."""
    return np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)


def _dedup_loop(sig: np.ndarray, keys: np.ndarray, params: NearDupParams,
                groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`dedup` one example at a time, each compared with the kept examples in its buckets only: memory stays
    linear however large a bucket is."""
    n = len(sig)
    dup_of = np.full(n, -1, dtype=np.int64)
    sim = np.zeros(n, dtype=np.float32)
    shared = _shared(keys)
    buckets: dict[tuple[int, int], list[int]] = {}
    thr = params.threshold
    for i in np.flatnonzero(shared.any(axis=1)).tolist():
        bands = np.flatnonzero(shared[i]).tolist()
        row_keys = keys[i].tolist()
        cands = set()
        for j in bands:
            cands.update(buckets.get((j, row_keys[j]), ()))
        if groups is not None:
            cands = {c for c in cands if groups[c] == groups[i]}
        if cands:
            c = np.array(sorted(cands))
            s = jaccard(sig, c, i)
            hit = np.flatnonzero(s >= thr)
            if hit.size:
                dup_of[i], sim[i] = c[hit[0]], s[hit[0]]
                continue
        for j in bands:
            buckets.setdefault((j, row_keys[j]), []).append(i)
    return dup_of, sim


def cross_pairs(sig_a: np.ndarray, sig_b: np.ndarray, params: NearDupParams, groups_a: np.ndarray | None = None,
                groups_b: np.ndarray | None = None) -> list[tuple[int, int, float]]:
    """Every (i in a, j in b) that is an LSH candidate with estimated Jaccard >= threshold (and, with groups,
    the same group), sorted."""
    if not len(sig_a) or not len(sig_b):
        return []
    ka, kb = band_keys(sig_a, params, groups_a), band_keys(sig_b, params, groups_b)
    found: set[tuple[int, int]] = set()
    for j in range(ka.shape[1]):
        common = np.intersect1d(ka[:, j], kb[:, j])
        if not common.size:
            continue
        index: dict[int, list[int]] = {}
        for i in np.flatnonzero(np.isin(kb[:, j], common)).tolist():
            index.setdefault(int(kb[i, j]), []).append(i)
        for i in np.flatnonzero(np.isin(ka[:, j], common)).tolist():
            found.update((i, k) for k in index[int(ka[i, j])])
    out = []
    for i, k in sorted(found):
        if groups_a is not None and groups_a[i] != groups_b[k]:
            continue
        s = float((sig_a[i] == sig_b[k]).mean())
        if s >= params.threshold:
            out.append((i, k, s))
    return out
