"""Pair log-likelihoods: how likely a model finds each side of a preference pair, and pair accuracy (the share of
pairs where the chosen answer is the likelier one).

The sequences are built the way TRL's DPOTrainer builds them (the prompt rendered with the generation prompt,
prompt + answer rendered whole, the answer being what follows their common prefix), and a side's
log-likelihood is the sum of its answer tokens' log-probabilities, so these numbers are the `ref_chosen_logps`
and `ref_rejected_logps` TRL computes for its reference model."""

from __future__ import annotations


def _ids(tok, messages: list[dict], **kw) -> list[int]:
    return list(tok.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)["input_ids"])


def sequences(tok, pair: dict, max_length: int = 1024) -> tuple[list[int], list[int], int]:
    """(prompt + chosen ids, prompt + rejected ids, prompt length), truncated to max_length like TRL."""
    prompt = _ids(tok, pair["prompt"], add_generation_prompt=True)
    chosen = _ids(tok, pair["prompt"] + pair["chosen"])
    rejected = _ids(tok, pair["prompt"] + pair["rejected"])
    n = min(_common(prompt, chosen), _common(prompt, rejected))
    return chosen[:max_length], rejected[:max_length], n


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def pair_logps(model, tok, pairs: list[dict], batch_size: int = 16,
               max_length: int = 1024) -> list[tuple[float, float]]:
    """[(log p(chosen | prompt), log p(rejected | prompt))] under `model`, one forward pass per side."""
    import torch

    from ft_pipeline.evaluation.scoring import pad_id

    flat, starts = [], []
    for p in pairs:
        c, r, n = sequences(tok, p, max_length)
        flat += [c, r]
        starts += [n, n]
    sums = []
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(flat), batch_size):
            seqs, first = flat[i:i + batch_size], starts[i:i + batch_size]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad_id(tok), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, s in enumerate(seqs):  # right padding: positions as in training
                ids[j, :len(s)], mask[j, :len(s)] = torch.tensor(s), 1
            # The vocabulary head only from the batch's first answer position on (a fifth of SmolLM2's FLOPs per
            # position, and a log-softmax over 49k entries): the prompts before it need no logits.
            start = max(min(first) - 1, 0)
            keep = torch.arange(start, width - 1, device=device)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep).logits
            logp = torch.log_softmax(logits.float(), dim=-1).gather(
                -1, ids[:, start + 1:].to(device)[..., None])[..., 0]
            for j, s in enumerate(seqs):
                sums.append(float(logp[j, first[j] - 1 - start:len(s) - 1 - start].sum()))
    return [(sums[k], sums[k + 1]) for k in range(0, len(sums), 2)]


def pair_accuracy(logps: list[tuple[float, float]]) -> float:
    """The share of pairs whose chosen side is more likely than the rejected one (ties count as wrong)."""
    return sum(c > r for c, r in logps) / len(logps) if logps else float("nan")
