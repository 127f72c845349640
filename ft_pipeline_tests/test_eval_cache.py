"""Per-example evaluation cache: a model answers each holdout question once; a new example is the only one
generated; an answer that stopped by itself is reused under a larger budget, one cut by the budget is not."""

import pytest

from ft_pipeline.evaluation.cache import EvalCache, example_key
from ft_pipeline.evaluation.run import answer_counts
from ft_pipeline.evaluation.scoring import evaluate
from ft_pipeline.model.base_models import load_model_and_tokenizer


def rec(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"order ORD-{100000 + i} is late"},
                         {"role": "assistant", "content": f'{{"order_id": "ORD-{100000 + i}"}}'}]}


@pytest.fixture(scope="module")
def model_tok(tiny_base):
    return load_model_and_tokenizer(tiny_base)


def test_cached_results_equal_fresh_ones_and_only_new_examples_generate(model_tok, tmp_path):
    model, tok = model_tok
    fresh = evaluate(model, tok, [rec(i) for i in range(4)], max_new_tokens=12, batch_size=4)
    first = evaluate(model, tok, [rec(i) for i in range(4)], 12, 4, cache=EvalCache(tmp_path, "m"))
    assert first["generated"] == 4 and first["metrics"] == pytest.approx(fresh["metrics"])
    # a new process: the cache is read back from its file
    loads = []
    again = evaluate(lambda: loads.append(1) or (model, tok), None, [rec(i) for i in range(4)], 12, 4,
                     cache=EvalCache(tmp_path, "m"))
    assert again["generated"] == 0 and loads == [] and again["per_example"] == first["per_example"]
    grown = evaluate(model, tok, [rec(i) for i in range(5)], 12, 4, cache=EvalCache(tmp_path, "m"))
    assert grown["generated"] == 1
    other = evaluate(model, tok, [rec(0)], 12, 4, cache=EvalCache(tmp_path, "another-model"))
    assert other["generated"] == 1


def test_the_evaluated_line_says_how_many_answers_were_generated_and_how_many_read_back(model_tok, tmp_path):
    model, tok = model_tok
    said = lambda n: answer_counts(  # noqa: E731
        evaluate(model, tok, [rec(i) for i in range(n)], 12, 4, cache=EvalCache(tmp_path, "m"))["generated"], n)
    assert said(4) == "4 answers generated"  # none in the cache: no "the rest from cache"
    assert said(4) == "all 4 answers from cache"
    assert said(6) == "2 answers generated, 4 from cache"
    assert said(7) == "1 answer generated, 6 from cache"
    assert answer_counts(1, 1) == "1 answer generated" and answer_counts(0, 1) == "1 answer from cache"
    assert answer_counts(0, 0) == "no answers"  # a baseline skipped before answering


@pytest.mark.parametrize("finished, n_new, stored_budget, budget, reused", [
    (True, 5, 12, 12, True),    # same budget
    (True, 5, 12, 40, True),    # stopped by itself after 5 tokens: a larger budget gives the same answer
    (True, 5, 12, 4, False),    # a budget below its length would have cut it
    (False, 12, 12, 40, False),  # cut at 12: with more room it might have gone on
    (False, 12, 12, 12, True),
])
def test_budget_rule(tmp_path, finished, n_new, stored_budget, budget, reused):
    c = EvalCache(tmp_path, "m")
    c.put(rec(0), "x", n_new, finished, stored_budget, 1.0, 3)
    assert (c.get(rec(0), budget) is not None) is reused


def test_example_key_ignores_provenance_and_weights_but_not_content():
    a, b = rec(0), {**rec(0), "drop": "x.jsonl", "line": 9}
    assert example_key(a) == example_key(b) != example_key(rec(1))


def full_nll(model, tok, record: dict) -> tuple[float, int]:
    """(summed NLL, token count) of a record's reference answer, by hand: one conversation, every position."""
    import torch

    from ft_pipeline.evaluation.scoring import prompt_messages

    p = tok(tok.apply_chat_template(prompt_messages(record), tokenize=False, add_generation_prompt=True),
            add_special_tokens=False)["input_ids"]
    f = tok(tok.apply_chat_template(record["messages"], tokenize=False), add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logp = torch.log_softmax(model(torch.tensor([f])).logits[0, :-1].float(), -1)
    return -float(sum(logp[i - 1, f[i]] for i in range(len(p), len(f)))), len(f) - len(p)


def test_losses_with_the_head_only_at_answer_positions_equal_the_full_computation(model_tok):
    from ft_pipeline.evaluation.scoring import answer_and_score

    model, tok = model_tok
    # prompts of different lengths in one batch: the earliest answer position decides where the head starts
    recs = [{"messages": [{"role": "user", "content": "x" * (3 + 5 * i)},
                          {"role": "assistant", "content": "ab" * (i + 1)}]} for i in range(5)]
    for r, (nll, n) in zip(recs, answer_and_score(model, tok, recs, max_new_tokens=4, batch_size=3)[2], strict=True):
        want_nll, want_n = full_nll(model, tok, r)
        assert n == want_n
        assert nll == pytest.approx(want_nll, rel=1e-5)


def test_one_pass_for_loss_and_prefill_gives_the_answers_and_losses_of_two(model_tok):
    from ft_pipeline.evaluation.scoring import answer_and_score, generate, prompt_messages

    model, tok = model_tok
    # prompts and references of different lengths in one batch: left padding before the prompts, right padding
    # after the references, and a batch of one
    recs = [{"messages": [{"role": "user", "content": "ask " + "x" * (2 + 7 * i)},
                          {"role": "assistant", "content": "ab" * (1 + (i * 5) % 9)}]} for i in range(7)]
    answers, info, losses = answer_and_score(model, tok, recs, max_new_tokens=10, batch_size=3)
    want_answers, want_info = generate(model, tok, [prompt_messages(r) for r in recs], 10, 3, details=True)
    assert answers == want_answers and info == want_info
    for r, (nll, n) in zip(recs, losses, strict=True):
        want_nll, want_n = full_nll(model, tok, r)
        assert n == want_n and nll == pytest.approx(want_nll, rel=1e-5)


def test_a_line_cut_by_a_killed_run_is_answered_again(tmp_path):
    c = EvalCache(tmp_path, "m")
    c.put(rec(0), "x", 3, True, 12, 1.0, 3)
    c.put(rec(1), "y", 3, True, 12, 1.0, 3)
    c.flush()
    text = c.path.read_text()
    c.path.write_text(text[: len(text) - 20])  # the second entry half written, as a SIGKILL leaves it
    again = EvalCache(tmp_path, "m")
    assert again.get(rec(0), 12)["prediction"] == "x" and again.get(rec(1), 12) is None


def test_progress_follows_the_answers_generated_a_batch_at_a_time(model_tok, tmp_path):
    model, tok = model_tok
    seen = []
    evaluate(model, tok, [rec(i) for i in range(2)], 12, 4, cache=EvalCache(tmp_path, "m"))
    evaluate(model, tok, [rec(i) for i in range(7)], 12, 2, cache=EvalCache(tmp_path, "m"),
             progress=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 5), (4, 5), (5, 5)]  # the 2 cached answers are not generated again
