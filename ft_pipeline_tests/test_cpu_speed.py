"""The two CPU speed-ups of training (model/cpu_speed.py): the LM head scored only where the loss is gives the same
loss and gradients as scoring every position, and the length-bucket sampler deals every example once an epoch, in
random batches of similar length, the same way again for the same seed."""

import pytest
import torch

from ft_pipeline.model import cpu_speed
from ft_pipeline.model.training import TrainOptions, build_trainer

RECORDS = [{"messages": [{"role": "user", "content": "refund " + "please " * (i % 7) + f"ORD-{i}"},
                         {"role": "assistant", "content": '{"intent": "refund", "n": %d}' % i}]} for i in range(12)]


def _loss_and_grads(trainer, batch, compact: bool, monkeypatch):
    from trl.trainer import utils

    model = trainer.model
    model.zero_grad(set_to_none=True)
    rows = []  # how many positions the head projects
    if compact:
        one_pass = cpu_speed._OnePassLogProbs.apply

        def spy(self, hidden, *rest):
            rows.append(len(hidden))
            return one_pass(self, hidden, *rest)

        monkeypatch.setattr(cpu_speed._OnePassLogProbs, "apply", spy)
        loss = trainer.compute_loss(model, dict(batch))
    else:  # TRL's own path on a CPU: every position, through its chunked function
        chunked = utils._ChunkedLogProbFunction

        class Spy:
            @staticmethod
            def apply(hidden, *rest):
                rows.append(len(hidden))
                return chunked.apply(hidden, *rest)

        monkeypatch.setattr(utils, "_ChunkedLogProbFunction", Spy)
        loss = type(trainer).__mro__[1].compute_loss(trainer, model, dict(batch))
        monkeypatch.setattr(utils, "_ChunkedLogProbFunction", chunked)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, rows[0]


def test_the_compact_head_gives_the_same_loss_and_gradients_from_the_supervised_positions_only(tiny_base, tmp_path,
                                                                                               monkeypatch):
    trainer = build_trainer(tiny_base, RECORDS, tmp_path / "ckpt",
                            TrainOptions(max_steps=1, per_device_train_batch_size=6), report_to_mlflow=False)
    batch = next(iter(trainer.get_train_dataloader()))
    full_loss, full_grads, full_rows = _loss_and_grads(trainer, batch, False, monkeypatch)
    loss, grads, rows = _loss_and_grads(trainer, batch, True, monkeypatch)
    supervised = int((batch["labels"][:, 1:] != -100).sum())
    assert full_rows == batch["input_ids"].shape[0] * (batch["input_ids"].shape[1] - 1)
    assert rows == supervised < full_rows
    torch.testing.assert_close(loss, full_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == full_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], full_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    from trl.trainer import utils

    assert utils._use_triton(torch.device("cpu")) is False  # TRL's switches are back as they were after the step
    assert utils._ChunkedLogProbFunction.__name__ == "ChunkedLogProbFunction"


@pytest.mark.parametrize("softcap, temperature, outputs", [
    (None, 1.0, ("log_probs", "entropy", "is_top1")),  # what SFT asks for
    (None, 1.0, ("log_probs", "entropy", "mean_logits", "is_top1")),  # what DPO asks for
    (30.0, 0.7, ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")),  # every transform, every field
])
def test_the_one_pass_head_computes_what_trls_chunked_function_does(softcap, temperature, outputs):
    from trl.trainer import utils

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=gen, requires_grad=True)
    weight = torch.randn(300, 16, generator=gen, requires_grad=True)
    labels = torch.randint(0, 300, (37,), generator=gen)
    labels[0] = int((hidden[0] @ weight.T).argmax())  # one target that is the top-1
    args = (None, labels, temperature, 64, softcap, 1.3, outputs)
    theirs = utils._ChunkedLogProbFunction.apply(hidden, weight, *args)
    ours = cpu_speed._OnePassLogProbs(utils._ChunkedLogProbFunction).apply(hidden, weight, *args)
    for a, b in zip(theirs, ours, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b.float(), a.float(), rtol=1e-4, atol=1e-5)
    assert ours[4][0]
    g_theirs = torch.autograd.grad(theirs[0].sum(), (hidden, weight))
    g_ours = torch.autograd.grad(ours[0].sum(), (hidden, weight))
    for a, b in zip(g_theirs, g_ours):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


LENGTHS = [((i * 7919) % 97) + 10 for i in range(203)]  # 203 examples of 10..106 tokens, in no order


def _padding_efficiency(order, batch_size):
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return sum(LENGTHS[i] for i in order) / sum(max(LENGTHS[i] for i in b) * len(b) for b in batches)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_length_buckets_deal_every_example_once_in_random_batches_of_similar_length(seed):
    order = cpu_speed.bucketed_order(LENGTHS, 8, seed)
    assert sorted(order) == list(range(len(LENGTHS)))  # every example once an epoch
    assert order == cpu_speed.bucketed_order(LENGTHS, 8, seed)  # the same again: a resumed run skips exactly
    assert order != cpu_speed.bucketed_order(LENGTHS, 8, seed + 1)  # a new epoch, a new order
    shuffled = torch.randperm(len(LENGTHS), generator=torch.Generator().manual_seed(seed)).tolist()
    assert _padding_efficiency(order, 8) > _padding_efficiency(shuffled, 8) + 0.15
    # not longest first, nor sorted across the epoch: the first third of the batches has short and long ones
    first = order[: len(order) // 3]
    assert min(LENGTHS[i] for i in first) < 30 and max(LENGTHS[i] for i in first) > 90


def test_the_trainer_samples_length_buckets_only_when_asked(tiny_base, tmp_path):
    opts = dict(max_steps=1, per_device_train_batch_size=4)
    grouped = build_trainer(tiny_base, RECORDS, tmp_path / "a", TrainOptions(**opts), report_to_mlflow=False)
    sampler = grouped._get_train_sampler()
    lengths = [len(x) for x in grouped.train_dataset["input_ids"]]
    assert list(sampler) == cpu_speed.bucketed_order(lengths, 4, 0)
    sampler.set_epoch(1)
    assert list(sampler) == cpu_speed.bucketed_order(lengths, 4, 1)
    plain = build_trainer(tiny_base, RECORDS, tmp_path / "b", TrainOptions(**opts, group_by_length=False),
                          report_to_mlflow=False)
    assert type(plain._get_train_sampler()).__name__ == "RandomSampler"
