"""Free-text metrics of an answer against its reference: chrF and ROUGE-L, per example."""

import re
from collections import Counter


def chrf(hypothesis: str, reference: str, char_order: int = 6, beta: float = 2.0) -> float:
    """Sentence chrF on sacrebleu's scale (0-100), with sacrebleu's defaults (chrF2: character n-grams of order
    1..6, whitespace removed, recall weighted twice as much as precision, no eps smoothing).

    Precision and recall are averaged over the orders where both strings have n-grams, then combined:
    F = (1 + b^2) P R / (b^2 P + R). Worked example, "abc" vs "abd": 1-grams P = R = 2/3, 2-grams P = R = 1/2,
    3-grams P = R = 0, so P = R = (2/3 + 1/2 + 0) / 3 = 7/18 and chrF = 100 * 7/18 = 38.89. Cross-checked on
    sacrebleu's published example in the tests (61.576).
    """
    hyp, ref = re.sub(r"\s+", "", hypothesis), re.sub(r"\s+", "", reference)
    precision = recall = 0.0
    orders = 0
    for n in range(1, char_order + 1):
        h = Counter(hyp[i:i + n] for i in range(len(hyp) - n + 1))
        r = Counter(ref[i:i + n] for i in range(len(ref) - n + 1))
        if h and r:
            common = sum((h & r).values())
            precision += common / sum(h.values())
            recall += common / sum(r.values())
            orders += 1
    if not orders or precision + recall == 0:
        return 0.0
    precision, recall = precision / orders, recall / orders
    b2 = beta ** 2
    return 100 * (1 + b2) * precision * recall / (b2 * precision + recall)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1 (0-1): longest common subsequence of lowercased word tokens, F = 2PR / (P + R) with
    P = LCS / hypothesis words and R = LCS / reference words, as rouge_score computes it without stemming.
    Tokens are unicode word runs (rouge_score keeps only [a-z0-9] runs; the two agree on ASCII text)."""
    h, r = _words(hypothesis), _words(reference)
    if not h or not r:
        return 0.0
    prev = [0] * (len(r) + 1)
    for x in h:
        cur = [0]
        for j, y in enumerate(r):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(h), lcs / len(r)
    return 2 * p * rec / (p + rec)
