"""Did tuning make it forget? A retention check on general prompts that have nothing to do with the task.

The base model answers each prompt greedily once (cached by the base model's content hash). A tuned model is
then scored on those very answers: the mean, over every answer token, of KL(base || tuned), the divergence of
the tuned model's next-token distribution from the base model's, both teacher-forced on the base's answer.

Why KL and not the tuned model's NLL of the base answers: NLL = the base's own entropy + KL, so it is not zero
for an unchanged model and it moves with how uncertain the base already was; KL is 0 for a model that still
predicts what the base predicts, whatever the prompt, and it counts a change anywhere in the distribution (not
only at the base's chosen token), which is what forgetting is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

# Written for this project: facts, arithmetic, writing, code, advice, reasoning, language. None is a support
# ticket and none asks for JSON, so the tuned task says nothing about how they should be answered.
PROMPTS = [
    "What is the capital of Australia?",
    "Who wrote the novel Pride and Prejudice?",
    "How many continents are there, and what are they called?",
    "Why is the sky blue? Answer in two sentences.",
    "What is photosynthesis?",
    "Name three planets of the solar system that are larger than Earth.",
    "What does DNA stand for?",
    "At what temperature does water boil at sea level, in Celsius?",
    "Who painted the Mona Lisa?",
    "What is the largest ocean on Earth?",
    "What is 17 plus 25?",
    "What is 9 times 8?",
    "If a train travels 60 kilometres in one hour, how far does it go in three hours?",
    "What is half of 250?",
    "Is 37 a prime number? Explain briefly.",
    "Convert 5 kilometres to metres.",
    "A shirt costs 20 dollars and is discounted by 25 percent. What is the new price?",
    "Write a haiku about autumn leaves.",
    "Write a two-sentence story about a lighthouse keeper.",
    "Give me three adjectives that describe the ocean.",
    "Write a short thank-you note to a neighbour who watered my plants.",
    "Suggest a name for a small bakery.",
    "Describe a sunset in one sentence.",
    "Write a limerick about a cat who loves to sleep.",
    "Write a Python function that returns the square of a number.",
    "What does the len() function do in Python?",
    "How do I reverse a list in Python?",
    "What is the difference between a list and a tuple in Python?",
    "Write a SQL query that selects all rows from a table named users.",
    "What does HTML stand for?",
    "Explain what a for loop is to a beginner.",
    "How can I get better sleep at night?",
    "Give me three tips for staying focused while studying.",
    "What should I pack for a weekend hiking trip?",
    "How do I make a cup of green tea?",
    "What are some healthy breakfast ideas?",
    "How can I save money on groceries?",
    "What is a good way to start learning to play the guitar?",
    "If all cats are animals and Tom is a cat, what is Tom?",
    "Which is heavier, a kilogram of feathers or a kilogram of iron?",
    "What comes next in the sequence 2, 4, 6, 8?",
    "If today is Monday, what day will it be in three days?",
    "Translate 'good morning' into Spanish.",
    "What is the plural of 'mouse'?",
    "What is a synonym for 'happy'?",
    "Correct the grammar: 'She don't like apples.'",
    "Summarize the plot of Romeo and Juliet in one sentence.",
    "What is the main idea of recycling?",
    "Explain what a rainbow is to a five-year-old.",
    "What are the primary colours?",
]


def _write_atomic(path: Path, value: dict) -> None:
    """A killed run leaves the old cache file or the new one, never half of one."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def conversations(n: int = len(PROMPTS)) -> list[list[dict]]:
    """The first `n` prompts as one-turn conversations."""
    return [[{"role": "user", "content": p}] for p in PROMPTS[:n]]


def base_answers(model, tok, cache_file: Path, max_new_tokens: int = 64, batch_size: int = 25,
                 n_prompts: int = len(PROMPTS)) -> list[str]:
    """The base model's greedy answers to the first `n_prompts` PROMPTS, computed once per base model
    (`cache_file` is named by the base's content hash)."""
    from ft_pipeline.evaluation.scoring import generate

    prompts = PROMPTS[:n_prompts]
    if cache_file.is_file():
        cached = json.loads(cache_file.read_text())
        if cached["prompts"] == prompts and cached["max_new_tokens"] == max_new_tokens:
            return cached["answers"]
    answers = generate(model, tok, conversations(n_prompts), max_new_tokens=max_new_tokens, batch_size=batch_size)
    _write_atomic(cache_file, {"prompts": prompts, "max_new_tokens": max_new_tokens, "answers": answers})
    return answers


def _answer_batches(tok, answers: list[str], batch_size: int):
    """(input_ids, attention_mask, answer_mask) batches: each prompt rendered for generation, then its answer.
    The answer mask marks the positions whose next token is an answer token."""
    import torch

    seqs = []
    for conv, ans in zip(conversations(len(answers)), answers, strict=True):
        prompt = tok(tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]
        answer = tok(ans, add_special_tokens=False)["input_ids"]
        seqs.append((prompt + answer, len(prompt)))
    from ft_pipeline.evaluation.scoring import pad_id

    pad = pad_id(tok)
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start:start + batch_size]
        width = max(len(s) for s, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        target = torch.zeros((len(chunk), width - 1), dtype=torch.bool)
        for row, (s, n_prompt) in enumerate(chunk):
            ids[row, :len(s)] = torch.tensor(s)
            mask[row, :len(s)] = 1
            target[row, n_prompt - 1:len(s) - 1] = True
        yield ids, mask, target


def mean_kl(model, tok, answers: list[str], base_model=None, batch_size: int = 10) -> float:
    """Mean per-token KL(base || model) over the base's answers. `model` is a PeftModel (its base is the same
    module with the adapter disabled) unless `base_model` is given (a full fine-tune has no base inside it)."""
    import contextlib

    import torch

    total, count = 0.0, 0
    model.eval()
    for ids, mask, target in _answer_batches(tok, answers, batch_size):
        ids, mask = ids.to(model.device), mask.to(model.device)
        # logits only from the batch's first answer position on: the prompts before it are not scored
        start = int(target.any(0).int().argmax())
        keep = torch.arange(start, ids.shape[1] - 1, device=model.device)
        with torch.inference_mode():
            tuned = torch.log_softmax(model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits.float(), -1)
            ctx = contextlib.nullcontext() if base_model is not None else model.disable_adapter()
            with ctx:
                ref = base_model if base_model is not None else model
                base = torch.log_softmax(ref(input_ids=ids, attention_mask=mask,
                                             logits_to_keep=keep).logits.float(), -1)
        kl = (base.exp() * (base - tuned)).sum(-1)
        sel = target[:, start:].to(kl.device)
        total += float(kl[sel].sum())
        count += int(sel.sum())
    return total / max(count, 1)


def cached_kl(cache_file: Path | None, load: Callable, answers: list[str]) -> float | None:
    """mean_kl of the model `load()` returns, remembered in `cache_file` (named by the model's content key) with
    the answers it was measured on; None for a model that has no adapter to disable."""
    import hashlib

    digest = hashlib.sha256(json.dumps(answers).encode()).hexdigest()[:16]
    if cache_file is not None and cache_file.is_file():
        cached = json.loads(cache_file.read_text())
        if cached["answers_sha256"] == digest:
            return cached["kl"]
    model, tok = load()
    if not hasattr(model, "disable_adapter"):
        return None
    kl = mean_kl(model, tok, answers)
    if cache_file is not None:
        _write_atomic(cache_file, {"answers_sha256": digest, "kl": kl})
    return kl


def side_by_side(model, tok, answers: list[str], n: int = 3, max_new_tokens: int = 64) -> list[dict]:
    """The first `n` prompts with the base's answer and the tuned model's, for the report."""
    from ft_pipeline.evaluation.scoring import generate

    n = min(n, len(answers))
    tuned = generate(model, tok, conversations(n), max_new_tokens=max_new_tokens, batch_size=n)
    return [{"prompt": PROMPTS[i], "base": answers[i], "tuned": tuned[i]} for i in range(n)]
