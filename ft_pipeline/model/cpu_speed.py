"""What makes the pipeline's training faster than TRL's defaults on a CPU, kept apart from the recipe
(model/training.py, preference/training.py) because it changes how the work is done, not what is learnt.

- **The LM head only where the loss is.** TRL 1.16's fused LM head (trl/trainer/utils.py, `add_fused_lm_head`)
  projects only the positions that carry loss, but only where Triton runs (`compact = _use_triton(device)`). On
  any other device it projects every position, prompt and padding included, and computes entropy and top-1
  there too, so that compilers (Neuron's) see one tile shape. Nothing recompiles on a CPU, and there the vocabulary
  head is a large share of the work: SmolLM2's 49,152 x 576 head is a fifth of its FLOPs per position, and its
  forward runs twice (the chunked function recomputes it for the backward pass). `compact_lm_head()` lets TRL's
  own code take its compact path on a CPU as well, projecting those positions once; the loss and its gradients
  are the same (a test checks).
- **Random batches of similar length.** `LengthBuckets` shuffles the examples, deals them in groups of a few
  batches, sorts each group by length, cuts it into batches and shuffles the batches: every example is seen once
  an epoch, order is random at the scale of a group, and little compute goes to padding. It is what
  transformers' `group_by_length` sampler means to do, without its two biases: that one sorts groups of 50
  batches by decreasing length and puts the longest batch first, so a run shorter than an epoch (the default
  run: 80 steps, a third of an epoch) trains mostly on the longest examples and ends on long ones.
- **Freed memory kept for the next step.** glibc hands blocks over its mmap threshold (32 MB at most, adjusted
  as it goes) straight back to the kernel when they are freed, so every training step faults in the pages of its
  large tensors again, zeroed by the kernel. `keep_freed_memory()` raises the thresholds once per process:
  measured on SmolLM2 at the default run's settings, 12 steps took 72.9-73.4 s instead of 77.4-79.5 s and the
  process took half the page faults (two runs each, side by side). The process keeps its peak memory."""

from __future__ import annotations

from contextlib import contextmanager

# Batches per sorted group: 64 examples at batch 8. Real / processed token positions over an epoch of the demo
# train set at batch 8: 0.853 unsorted, 0.941 with groups of 4 batches, 0.967 with 8, 0.982 with 16.
BUCKET_BATCHES = 8


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (see the module docstring). False where the C
    library is not glibc (nothing is changed there)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 1 << 30) and mallopt(m_trim_threshold, (1 << 31) - 1))


@contextmanager
def compact_lm_head():
    """While inside, TRL's fused LM head scores only the supervised positions on a CPU too, in one pass."""
    from trl.trainer import utils

    use_triton, chunked = utils._use_triton, utils._ChunkedLogProbFunction
    utils._use_triton = lambda device: device.type == "cpu" or use_triton(device)
    utils._ChunkedLogProbFunction = _OnePassLogProbs(chunked)
    try:
        yield
    finally:
        utils._use_triton, utils._ChunkedLogProbFunction = use_triton, chunked


class _OnePassLogProbs:
    """TRL's ChunkedLogProbFunction.apply, on a CPU as plain differentiable torch ops over the compact positions.
    The chunked function exists to never hold (tokens x vocabulary) logits on a GPU, and recomputes them for the
    backward pass; on a CPU, for the few hundred supervised positions of a batch, holding them (60 MB at 307 x
    49,152) is cheap and the recomputation is not. The extra outputs (entropy, ...) are metrics to SFT and DPO:
    computed without gradient. Elsewhere than a CPU, TRL's own function runs."""

    def __init__(self, chunked):
        self.chunked = chunked

    def apply(self, hidden, weight, bias, labels, temperature, chunk_size, softcap, logit_scale, outputs):
        import torch
        import torch.nn.functional as F

        if hidden.device.type != "cpu":
            return self.chunked.apply(hidden, weight, bias, labels, temperature, chunk_size, softcap, logit_scale,
                                      outputs)
        z = F.linear(hidden, weight, bias).float() * logit_scale
        if softcap is not None:
            z = softcap * torch.tanh(z / softcap)
        z = z / temperature
        log_p = torch.log_softmax(z, dim=-1)
        log_probs = log_p.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            p = log_p.exp() if {"entropy", "log_sum_sq_probs"} & set(outputs) else None
            entropy = -(p * log_p).sum(-1) if "entropy" in outputs else None
            log_sum_sq_probs = (p * p).sum(-1).log() if "log_sum_sq_probs" in outputs else None
            mean_logits = z.mean(-1) if "mean_logits" in outputs else None
            is_top1 = z.argmax(-1) == labels if "is_top1" in outputs else None  # the first maximum, as TRL's
        return log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1


def bucketed_order(lengths: list[int], batch_size: int, seed: int, bucket_batches: int = BUCKET_BATCHES) -> list[int]:
    """One epoch of example indices: batches of similar length, in random order (see the module docstring)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(lengths), generator=gen).tolist()
    group = batch_size * bucket_batches
    batches = []
    for start in range(0, len(perm), group):
        members = sorted(perm[start:start + group], key=lambda i: lengths[i])
        batches += [members[i:i + batch_size] for i in range(0, len(members), batch_size)]
    # A short batch (the epoch's last, at most one) stays last: the Trainer cuts this stream into batch_size pieces.
    tail = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    shuffled = [batches[b] for b in torch.randperm(len(batches), generator=gen).tolist()] + tail
    return [i for batch in shuffled for i in batch]


def length_buckets(lengths: list[int], batch_size: int, seed: int):
    """A torch Sampler over `bucketed_order`, a new order each epoch (the Trainer calls `set_epoch`), the same
    order again for the same seed and epoch, so a resumed run skips exactly the batches it has trained on."""
    from torch.utils.data import Sampler

    class LengthBuckets(Sampler):
        def __init__(self):
            self.epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __len__(self) -> int:
            return len(lengths)

        def __iter__(self):
            return iter(bucketed_order(lengths, batch_size, seed + self.epoch))

    return LengthBuckets()


def trainer_class(base):
    """`base` (TRL's SFTTrainer or DPOTrainer) with the compact LM head, and, when the run asks for
    group_by_length, LengthBuckets as its training sampler."""

    class Trainer(base):
        def compute_loss(self, *args, **kwargs):
            with compact_lm_head():
                return super().compute_loss(*args, **kwargs)

        def _get_train_sampler(self, train_dataset=None):
            ds, args = self.train_dataset if train_dataset is None else train_dataset, self.args
            if args.train_sampling_strategy != "group_by_length" or ds is None or "input_ids" not in ds.column_names:
                return super()._get_train_sampler(train_dataset)
            seed = args.data_seed if args.data_seed is not None else args.seed
            return length_buckets([len(x) for x in ds["input_ids"]], args.train_batch_size, seed)

    Trainer.__name__ = Trainer.__qualname__ = f"Pipeline{base.__name__}"
    return Trainer
