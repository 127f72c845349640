"""Requests that arrive together are generated together: one generation thread takes the first waiting request,
waits up to a short window for others (or until the batch is full), and runs `model.generate` once per group
of requests that can share a call.

Constrained (response_format) and free requests share a call: a GrammarMask masks each constrained row with
its own matcher, compiled in the request's thread before the job was queued.

A group is one model in memory and one way of choosing tokens (the versions of several tasks on one shared base
model are one model: a call that mixes their adapters runs each row with its own, serving.adapters):
every greedy request of a model together;
sampled requests together when they share temperature and top_p; a request with a `seed` alone, so that its
answer depends on its seed only and not on what it was batched with. Within a call each row has its own
completion budget and stop strings, and streams its text as it is generated (see `_Rows`)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from ft_pipeline.evaluation.scoring import left_padded, pad_id
from ft_pipeline.structured.grammar import GrammarMask

log = logging.getLogger("ft_pipeline.serving")

# Events a job reports, from the generation thread: ("delta", text), ("done", finish_reason, completion_tokens),
# ("error", message). finish_reason is "stop" (end of turn or a stop string) or "length" (the budget ran out).
Emit = Callable[..., None]


@dataclass(eq=False)
class Job:
    served: object  # models.Served
    prompt_ids: list[int]
    max_new_tokens: int
    emit: Emit
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = True  # False: the text arrives as one delta when the row ends (no event-loop wakeup per token)
    cancelled: bool = False  # set when the client went away: the row stops at the next token
    matcher: object | None = None  # llguidance matcher of the request's response_format; None: free text
    want_logprob: bool = False  # measure mean_logprob (the request is stored); off: no cost to its call
    mean_logprob: float | None = None  # set before "done": mean log-probability of the row's tokens
    submitted: float = field(default_factory=time.monotonic)

    def group_key(self) -> tuple:
        shared = getattr(self.served, "shared", None)
        model = id(self.served)
        if shared is not None:  # versions on one shared base share a call when their tokenizers agree on the end
            tok = self.served.tokenizer
            model = (id(shared), len(tok), tok.eos_token_id)
        if self.temperature == 0:
            return model, "greedy"
        if self.seed is not None:
            return model, "seeded", id(self)
        return model, "sample", self.temperature, self.top_p


class _MaskStats:
    """Time spent masking, and the constrained tokens it was spent on (the serve benchmark reads it)."""

    def __init__(self):
        self.seconds, self.tokens = 0.0, 0

    def add(self, seconds: float, tokens: int) -> None:
        self.seconds, self.tokens = self.seconds + seconds, self.tokens + tokens


MASK_STATS = _MaskStats()


def holdback(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of `text` must wait before they are sent: the longest tail that could
    still grow into a stop string, and a trailing U+FFFD (bytes of a character not all generated yet)."""
    n = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), n, -1):
            if text.endswith(s[:k]):
                n = k
                break
    if text.endswith("\ufffd"):
        n = max(n, len(text) - len(text.rstrip("\ufffd")))
    return n


class _LogProbs:
    """A logits processor placed first, so it sees the model's own logits (before the grammar mask and the
    temperature and top-p warpers, which transformers applies after the processors it is given): it keeps each
    step's logits and their log-normaliser, and `_Rows` reads the chosen token's log-probability from them once
    the token is chosen. One logsumexp over (rows, vocabulary) per step, beside a forward pass."""

    def __init__(self):
        self.logits = self.lse = None

    def __call__(self, input_ids, scores):
        self.logits, self.lse = scores, torch.logsumexp(scores, dim=-1)
        return scores


class _Rows(StoppingCriteria):
    """Per-row bookkeeping of one generate call: each new token, the text it adds, the row's stop strings and
    budget. It is a stopping criterion because that is the hook transformers calls after every step with every
    row's ids (a streamer gets one token per row with no way to stop a row; in transformers 5 it is also fed
    after the stop check); the bool it returns per row is what ends a row while the others go on."""

    def __init__(self, jobs: list[Job], tok, width: int, logprobs: _LogProbs | None = None):
        self.jobs, self.tok, self.width, self.logprobs = jobs, tok, width, logprobs
        self.lp_sum = [0.0] * len(jobs)
        self.n = [0] * len(jobs)
        self.sent = [""] * len(jobs)
        self.done = torch.zeros(len(jobs), dtype=torch.bool)

    def _send(self, row: int, text: str) -> None:
        if text:
            self.sent[row] += text
            if self.jobs[row].stream:
                self.jobs[row].emit("delta", text)

    def _finish(self, row: int, reason: str) -> None:
        self.done[row] = True
        job = self.jobs[row]
        if job.want_logprob and self.n[row]:
            job.mean_logprob = self.lp_sum[row] / self.n[row]
        if not job.stream and self.sent[row]:
            job.emit("delta", self.sent[row])
        job.emit("done", reason, self.n[row])

    def __call__(self, input_ids, scores, **kwargs):
        eos = self.tok.eos_token_id
        if self.logprobs is not None and self.logprobs.logits is not None:
            # the chosen tokens' logits are never masked (a mask only forbids tokens that were not chosen)
            last = input_ids[:, -1:].to(self.logprobs.logits.device)
            chosen = (self.logprobs.logits.gather(1, last)[:, 0] - self.logprobs.lse).tolist()
        else:
            chosen = None
        for row, job in enumerate(self.jobs):
            if self.done[row]:
                continue
            if job.cancelled:
                self._finish(row, "cancelled")
                continue
            self.n[row] += 1
            if chosen is not None:
                self.lp_sum[row] += chosen[row]
            ended = int(input_ids[row, -1]) == eos  # decoded without it: skip_special_tokens
            text = self.tok.decode(input_ids[row, self.width:self.width + self.n[row]], skip_special_tokens=True)
            hits = [i for i in (text.find(s) for s in job.stop) if i >= 0]
            if hits:
                self._send(row, text[len(self.sent[row]):min(hits)])
                self._finish(row, "stop")
            elif ended or self.n[row] >= job.max_new_tokens:
                self._send(row, text[len(self.sent[row]):])
                self._finish(row, "stop" if ended else "length")
            else:
                self._send(row, text[len(self.sent[row]):len(text) - holdback(text, job.stop)])
        return self.done.clone().to(input_ids.device)

    def finish_rest(self) -> None:
        """Rows generate stopped without this criterion ending them (it ran out of max_new_tokens)."""
        for row in range(len(self.jobs)):
            if not self.done[row]:
                self._finish(row, "length")


def generate_group(jobs: list[Job]) -> None:
    """One `model.generate` call for jobs of one model and one way of choosing tokens: on a shared base, with the
    one adapter of the jobs merged into its weights, or each row with its own adapter (adapters.SharedBase.rows);
    adapters that cannot mix run one merged call each, the merged one first."""
    shared = getattr(jobs[0].served, "shared", None)
    if shared is None:
        return _generate(jobs)
    names = [j.served.adapter for j in jobs]
    with shared.lock:
        if len(set(names)) == 1:
            shared.use(names[0])
            return _generate(jobs)
        if shared.mixable(set(names)):
            with shared.rows(names):
                return _generate(jobs)
    for name in sorted(set(names), key=lambda n: n != shared.merged):
        with shared.lock:
            shared.use(name)
            _generate([j for j in jobs if j.served.adapter == name])


def _generate(jobs: list[Job]) -> None:
    served, first = jobs[0].served, jobs[0]
    tok, model = served.tokenizer, served.model
    pad = pad_id(tok)
    ids, mask = left_padded([j.prompt_ids for j in jobs], pad)
    logprobs = _LogProbs() if any(j.want_logprob for j in jobs) else None
    rows = _Rows(jobs, tok, ids.shape[1], logprobs)
    if first.temperature == 0:
        choose = {"do_sample": False}
    else:
        # top_k=0: OpenAI's sampling has no top-k cut; transformers applies top_k=50 unless told otherwise.
        choose = {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p, "top_k": 0}
        if first.seed is not None:
            torch.manual_seed(first.seed)  # only this thread generates, and a seeded job is alone in its call
    processors = LogitsProcessorList([logprobs] if logprobs else [])
    if any(j.matcher is not None for j in jobs):
        grammar = GrammarMask([j.matcher for j in jobs], tok.eos_token_id, ended=lambda row: bool(rows.done[row]))
        processors.append(grammar)
    with torch.inference_mode():
        model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                       max_new_tokens=max(j.max_new_tokens for j in jobs), pad_token_id=pad,
                       eos_token_id=tok.eos_token_id, stopping_criteria=StoppingCriteriaList([rows]),
                       logits_processor=processors, **choose)
    rows.finish_rest()
    if any(j.matcher is not None for j in jobs):
        MASK_STATS.add(grammar.mask_s, sum(rows.n[i] for i, j in enumerate(jobs) if j.matcher is not None))


def _merged(served) -> bool:
    shared = getattr(served, "shared", None)
    return shared is not None and shared.merged == served.adapter


class Batcher:
    """The generation thread and its queue."""

    def __init__(self, window_s: float = 0.01, max_batch: int = 16,
                 run: Callable[[list[Job]], None] = generate_group):
        self.window_s, self.max_batch, self._run = window_s, max_batch, run
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.batches: list[int] = []  # size of each generate call, most recent last (bounded)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ft-pipeline-generate", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def _collect(self, first: Job) -> list[Job]:
        batch, deadline = [first], time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # stop after this batch
                break
            batch.append(job)
        return batch

    def _loop(self) -> None:
        while (first := self._queue.get()) is not None:
            groups: dict[tuple, list[Job]] = {}
            for job in self._collect(first):
                groups.setdefault(job.group_key(), []).append(job)
            # the adapter merged now goes first: one switch fewer
            for jobs in sorted(groups.values(), key=lambda g: not _merged(g[0].served)):
                self.batches = (self.batches + [len(jobs)])[-1000:]
                try:
                    self._run(jobs)
                except Exception as e:  # noqa: BLE001 - one failed call fails its own requests, not the server
                    log.exception("generation failed for a batch of %d", len(jobs))
                    for job in jobs:
                        job.emit("error", f"generation failed: {type(e).__name__}: {e}")
