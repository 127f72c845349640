"""MinHash/LSH near-duplicates: what counts as one at the default threshold, and that the vectorized signatures
and banding are datasketch's own."""

import numpy as np
import pytest
from datasketch import LeanMinHash, MinHash, MinHashLSH

from ft_pipeline.data import lsh, near_dup
from ft_pipeline.data.near_dup import NearDupParams

Q = ("Hi team, my Nimbus 5 laptop arrived yesterday with a cracked screen, the charger is missing from the box "
     "and the keyboard has two dead keys. I paid with my card last Monday and the courier left it at the door "
     "in the rain. Order ORD-482913, please send a replacement or tell me how to return it and get a refund, "
     "I need the laptop for work by Friday at the latest.")


A = ("We are sorry about the damage. A replacement Nimbus 5 laptop with a new charger leaves our warehouse "
     "today by express courier and should reach you by Thursday; the driver will ask for a signature. Please "
     "keep the damaged laptop in its box: the courier collects it when delivering the replacement, with no "
     "cost to you.")
A2 = ("Thanks for the photos. Our records show the parcel was handed over intact, so we have opened a claim "
      "with the courier, which usually takes five working days. Meanwhile you can return the laptop from any "
      "post office with the prepaid label attached to this message, and we refund the card you paid with.")


def exact_jaccard(a, b, ngram=2):
    sa, sb = near_dup.shingles(a, ngram), near_dup.shingles(b, ngram)
    return len(sa & sb) / len(sa | sb)


def conv(user, assistant="We are sorry, a replacement is on its way."):
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


# (a, b, near-duplicates at the default threshold?) — one line a case.
CASES = [
    (conv(Q), conv(Q.replace("Hi team,", "Hello team,")), True),  # one word differs
    (conv(Q), conv(Q.replace("cracked", "broken").replace("please", "kindly")), True),  # two words differ
    (conv(Q), conv(Q + " Thanks!"), True),  # a sign-off added
    (conv(Q), conv(Q.upper().replace("ORD-", "ord-")), True),  # case does not count
    (conv(Q), conv("Can I change the delivery address of order ORD-482913 to my office?"), False),  # other request
    (conv(Q, A), conv(Q, A2), False),  # same question, a different long answer
    (conv("Where is my Pulse smartwatch?"), conv("Where is my Nova e-reader?"), False),  # short, other product
]


@pytest.mark.parametrize("a,b,expected", CASES)
def test_near_duplicate_cases(a, b, expected):
    p = NearDupParams()
    # A fair case is clear of the threshold: 64 permutations estimate Jaccard to about +-0.05.
    assert abs(exact_jaccard(a, b) - p.threshold) >= 0.09, exact_jaccard(a, b)
    sig = near_dup.signatures([a, b], p)
    dup_of, sim = lsh.dedup(sig, p)
    assert (dup_of[1] == 0) == expected, f"estimated Jaccard {lsh.jaccard(sig, 0, 1):.2f}"
    assert dup_of[0] == -1  # the first of a pair is always kept


def test_threshold_is_the_knob():
    edited = [conv(Q), conv(Q.replace("cracked", "broken").replace("please", "kindly"))]
    other_answer = [conv(Q, A), conv(Q, A2)]
    assert [round(exact_jaccard(*edited), 2), round(exact_jaccard(*other_answer), 2)] == [0.9, 0.42]
    for pair, dup_at in ((edited, {0.3, 0.8}), (other_answer, {0.3})):
        for t in (0.3, 0.8, 0.97):
            p = NearDupParams(threshold=t)
            assert (lsh.dedup(near_dup.signatures(pair, p), p)[0][1] == 0) == (t in dup_at), t


@pytest.mark.parametrize("params", [NearDupParams(), NearDupParams(num_perm=128, ngram=3, seed=7)])
def test_signatures_equal_datasketch_minhash(params):
    examples = [conv(Q), conv("ok"), [{"role": "assistant", "content": "?!"}], conv(Q * 20)]  # long, short, 1 word
    sig = near_dup.signatures(examples, params, batch=3)  # a batch boundary inside the list
    for ex, got in zip(examples, sig):
        m = MinHash(num_perm=params.num_perm, seed=params.seed, hashfunc=lambda h: h)
        m.update_batch(sorted(near_dup.shingles(ex, params.ngram)))
        assert np.array_equal(m.hashvalues, got)


def test_lsh_candidates_match_datasketch_lsh():
    rng = np.random.default_rng(0)
    base = [f"w{i}" for i in range(40)]
    docs = []
    for _ in range(300):  # clusters of edited copies plus unrelated docs
        words = list(base) if rng.random() < 0.5 else [f"u{rng.integers(1e9)}" for _ in range(40)]
        for _ in range(int(rng.integers(0, 6))):
            words[int(rng.integers(40))] = f"x{rng.integers(1e9)}"
        docs.append([{"role": "user", "content": " ".join(words)}])
    p = NearDupParams(threshold=0.7)
    sig = near_dup.signatures(docs, p)
    half = len(docs) // 2
    ours = {(i, j) for i, j, _ in lsh.cross_pairs(sig[:half], sig[half:], p)}
    index = MinHashLSH(num_perm=p.num_perm, params=p.bands)
    for j in range(half, len(docs)):
        index.insert(j - half, LeanMinHash(seed=p.seed, hashvalues=sig[j], scheme="affine32"))
    theirs = set()
    for i in range(half):
        for j in index.query(LeanMinHash(seed=p.seed, hashvalues=sig[i], scheme="affine32")):
            if lsh.jaccard(sig, i, half + j) >= p.threshold:
                theirs.add((i, j))
    assert ours == theirs and len(ours) > 100


def test_dedup_keeps_no_candidate_pair_and_points_at_kept_examples():
    docs = [conv(Q.replace("Hi team,", g)) for g in ("Hi team,", "Hello,", "Hey,", "Dear support,")]
    docs += [conv(f"Where is order ORD-{n}? It was due {d}.") for n, d in ((111111, "Monday"), (222222, "Friday"))]
    p = NearDupParams()
    sig = near_dup.signatures(docs, p)
    dup_of, _ = lsh.dedup(sig, p)
    assert dup_of.tolist() == [-1, 0, 0, 0, -1, -1]
    kept = np.flatnonzero(dup_of < 0)
    assert lsh.cross_pairs(sig[kept], sig[kept], p) == [(i, i, 1.0) for i in range(len(kept))]


def _greedy_reference(sig, p, groups=None):
    """`dedup` by its definition, pair by pair: the earliest earlier kept example (of the same group) sharing
    a band key whose estimated Jaccard is >= threshold."""
    keys = lsh.band_keys(sig, p)
    same = (lambda i, j: True) if groups is None else (lambda i, j: groups[i] == groups[j])
    dup_of = [-1] * len(sig)
    for i in range(len(sig)):
        for j in range(i):
            if dup_of[j] < 0 and same(i, j) and (keys[i] == keys[j]).any() and lsh.jaccard(sig, i, j) >= p.threshold:
                dup_of[i] = j
                break
    return dup_of


def _edited_copies(rng, copy_share: float, edits) -> list[str]:
    """300 texts over a 60-word vocabulary: with probability `copy_share` an earlier text with `edits()` words
    replaced (chains of copies of copies), else a new random text of 8-29 words."""
    vocab = [f"w{i}" for i in range(60)]
    texts = []
    for _ in range(300):
        if texts and rng.random() < copy_share:
            words = texts[rng.integers(len(texts))].split()
            for _ in range(edits()):
                words[rng.integers(len(words))] = vocab[rng.integers(len(vocab))]
            texts.append(" ".join(words))
        else:
            texts.append(" ".join(rng.choice(vocab, rng.integers(8, 30))))
    return texts


@pytest.mark.parametrize("threshold,num_perm", [(0.5, 32), (0.8, 64), (0.9, 128)])
def test_dedup_vectorized_and_loop_agree_with_the_greedy_definition(threshold, num_perm, monkeypatch):
    """Clusters of edited copies, some of them chained (a copy of a copy), among unrelated examples: the array
    path (whole, and with its pairs listed a few groups at a time), its loop fallback (forced with max_pairs=0)
    and the pair-by-pair definition give the same answer."""
    rng = np.random.default_rng(3)
    # a few edits: a near-duplicate, or drifted past the threshold
    texts = _edited_copies(rng, copy_share=0.4, edits=lambda: rng.integers(0, 3))
    p = NearDupParams(threshold=threshold, num_perm=num_perm)
    sig = near_dup.signatures([conv(t) for t in texts], p)
    vec, vec_sim = lsh.dedup(sig, p)
    loop, loop_sim = lsh.dedup(sig, p, max_pairs=0)
    assert vec.tolist() == loop.tolist() == _greedy_reference(sig, p)
    assert np.array_equal(vec_sim, loop_sim)
    keys = lsh.band_keys(sig, p)
    biggest = max(np.unique(keys[:, j], return_counts=True)[1].max() for j in range(keys.shape[1]))
    monkeypatch.setattr(lsh, "_PAIR_SLICE", biggest * (biggest - 1) // 2)  # slices of one or a few groups
    assert lsh._similar_pairs(sig, keys, p, 1 << 30) is not None  # sliced, not the loop
    sliced, sliced_sim = lsh.dedup(sig, p)
    assert sliced.tolist() == vec.tolist() and np.array_equal(sliced_sim, vec_sim)
    assert 30 < (vec >= 0).sum() < 200  # both kinds of rows are there: the check is not vacuous


def test_bad_params_are_rejected():
    with pytest.raises(ValueError, match="threshold"):
        NearDupParams(threshold=0)
    with pytest.raises(ValueError, match="num_perm"):
        NearDupParams(num_perm=1)


@pytest.mark.parametrize("threshold,num_perm", [(0.5, 32), (0.7, 64), (0.8, 64), (0.8, 128), (0.9, 128), (0.95, 256)])
def test_bands_are_datasketchs_choice(threshold, num_perm):
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.05, 0.95))
    assert NearDupParams(threshold=threshold, num_perm=num_perm).bands == (lsh.b, lsh.r)


def test_dedup_with_groups_pairs_only_examples_of_one_group():
    """Groups (the pipeline's answer keys) keep near-duplicates of different groups apart: the array path, the
    loop and the definition agree, and cross_pairs skips pairs of two groups."""
    rng = np.random.default_rng(5)
    texts = _edited_copies(rng, copy_share=0.5, edits=lambda: 1)
    p = NearDupParams()
    sig = near_dup.signatures([conv(t) for t in texts], p)
    groups = rng.integers(0, 3, len(texts)).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    vec, _ = lsh.dedup(sig, p, groups=groups)
    loop, _ = lsh.dedup(sig, p, max_pairs=0, groups=groups)
    assert vec.tolist() == loop.tolist() == _greedy_reference(sig, p, groups)
    hit = np.flatnonzero(vec >= 0)
    assert len(hit) > 20 and (groups[hit] == groups[vec[hit]]).all()
    assert (vec >= 0).sum() < (lsh.dedup(sig, p)[0] >= 0).sum()  # fewer than without groups: the check bites
    pairs = lsh.cross_pairs(sig[:150], sig[150:], p, groups[:150], groups[150:])
    assert pairs and all(groups[i] == groups[150 + j] for i, j, _ in pairs)
    assert set(pairs) < set(lsh.cross_pairs(sig[:150], sig[150:], p))
