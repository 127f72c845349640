"""One evaluation of a trained adapter: the base model, the tuned model and the champion on the holdout and on
the fixed hand-written set, each example answered once per model (evaluation/cache.py), and the retention check
(evaluation/retention.py) for the tuned model and the champion."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from ft_pipeline import knobs
from ft_pipeline.evaluation import cache as eval_cache
from ft_pipeline.evaluation import constrained as cons
from ft_pipeline.evaluation import retention
from ft_pipeline.evaluation import scoring as evaluation

# The allowed values of the evaluation knobs (knobs.py).
KNOBS = {
    "max_new_tokens": knobs.POSITIVE, "batch_size": knobs.POSITIVE, "max_examples": knobs.NON_NEGATIVE,
    "retention_prompts": knobs.Knob(ge=0, le=len(retention.PROMPTS)),
    "min_json_valid": knobs.FRACTION, "metric": knobs.Knob(choices=evaluation.GATE_METRICS),
    "max_retention_kl": knobs.NON_NEGATIVE, "few_shot_k": knobs.NON_NEGATIVE, "baseline_examples": knobs.NON_NEGATIVE,
    "constrained_examples": knobs.NON_NEGATIVE, "gate_on": knobs.Knob(choices=cons.GATE_ON),
    "candidate": knobs.Knob(choices=evaluation.CANDIDATES),
}


def tuned_key(base_sha256: str, adapter_dir: Path | str) -> str:
    """The evaluation-cache name of a tuned model: its base and adapter contents (the same adapter registered
    and then loaded back as the champion has the same files, so the same key)."""
    from ft_pipeline.model.base_models import content_hash

    return eval_cache.model_key(base_sha256, content_hash(Path(adapter_dir)))


def answer_counts(generated: int, total: int) -> str:
    """Where a model's `total` answers on a set came from, for the line logged once it is evaluated: generated
    now, read from the evaluation cache, or both."""
    answers = lambda n: f"{n} answer{'' if n == 1 else 's'}"  # noqa: E731
    if total == 0:
        return "no answers"
    if generated == total:
        return f"{answers(total)} generated"
    if generated == 0:
        return f"all {answers(total)} from cache" if total > 1 else f"{answers(total)} from cache"
    return f"{answers(generated)} generated, {total - generated} from cache"


def evaluate_all(base: dict, adapter_dir: Path | str, holdout: list[dict], fixed: list[dict], cache_dir: Path,
                 max_new_tokens: int = 128, batch_size: int = 64,
                 champion: tuple[Callable, str | None] | None = None,
                 log: Callable[[str, int, int], None] = lambda what, generated, total: None,
                 more: dict[str, Path] | None = None,
                 pairs: list[dict] | None = None,
                 progress: Callable[[str, int, int], None] = lambda what, done, total: None,
                 retention_prompts: int = len(retention.PROMPTS), baselines=None,
                 constrained: cons.ConstrainedSpec | None = None) -> dict:
    """{"holdout": {model: result}, "fixed": {model: result}, "retention": {...} | None, "max_new_tokens": N,
    "tuned_key": the tuned model's cache key, "keys": {model: cache key}, "pair_accuracy": {model: share}}.
    `champion` is (a loader returning (model, tokenizer), its cache key or None); `more` is {name: adapter dir}
    of further adapters on the same base (the DPO adapter), evaluated like the tuned one; `pairs` are holdout
    preference pairs, scored for pair accuracy by base, tuned and `more` models. `log(what, generated, total)`
    follows each model evaluated on each set: of its `total` answers, `generated` were not in the evaluation
    cache (answer_counts words it). `progress(what, done, total)` follows each model's generation on each set, a
    batch at a time. The retention check uses the first `retention_prompts` of its prompts (0: no retention
    check). `baselines` (a baseline_run.BaselineSpec) are the prompting baselines, run with the base model: their
    results are under "baselines". With `constrained` (a schema), every model also answers each set's subset
    under it (evaluation/constrained.py): {set: {model: result}} under "constrained"."""
    from ft_pipeline.model.base_models import load_model_and_tokenizer
    from ft_pipeline.model.cpu_speed import keep_freed_memory

    keep_freed_memory()
    adapter_dir = Path(adapter_dir)
    sets = {"holdout": holdout, "fixed": fixed}
    tok = evaluation.load_tokenizer(adapter_dir)
    budget = evaluation.answer_budget(tok, holdout + fixed, max_new_tokens)
    out = {"holdout": {}, "fixed": {}, "retention": None, "max_new_tokens": budget, "keys": {}, "pair_accuracy": {},
           "baselines": None, "constrained": {"holdout": {}, "fixed": {}}}
    under = constrained if constrained is not None and constrained.schema is not None else None
    grammars = cons.grammars_for(under) if under else None

    def prompted(model, tok_):
        if baselines is not None and baselines.definitions:
            from ft_pipeline.evaluation.baseline_run import run_baselines

            out["baselines"] = run_baselines(model, tok_, baselines, sets, base["content_sha256"],
                                             cache_dir / "eval", budget, batch_size, log=log, progress=progress)

    def score_pairs(name: str, model, tok_):
        if pairs:
            from ft_pipeline.evaluation.pair_scoring import pair_accuracy, pair_logps

            out["pair_accuracy"][name] = pair_accuracy(pair_logps(model, tok_, pairs))

    def run(name: str, model, tok_, key: str | None):
        if not hasattr(model, "generate"):  # a loader: load at most once, and only if an answer is missing
            model = _memo(model)
        cache = eval_cache.EvalCache(cache_dir / "eval", key)
        for set_name, records in sets.items():
            if records:
                what = f"{name} ({set_name})"
                res = evaluation.evaluate(model, tok_, records, budget, batch_size, cache=cache,
                                          progress=lambda done, total, what=what: progress(what, done, total))
                log(what, res["generated"], len(records))
                out[set_name][name] = res
        if under:
            done = cons.evaluate(under, model, tok_, sets, key, cache_dir / "eval", budget, batch_size, grammars,
                                 progress=lambda s, d, t: progress(f"{name} ({s}, constrained)", d, t))
            for set_name, res in done.items():
                log(f"{name} ({set_name}, constrained)", res["generated"], len(res["per_example"]))
                out["constrained"][set_name][name] = res
        return model

    full = evaluation.is_full_model(adapter_dir)
    base_key = eval_cache.model_key(base["content_sha256"])
    answers, kl_cache = None, lambda k: cache_dir / "retention" / f"kl-{k}.json" if k else None  # noqa: E731
    if full:  # a full fine-tune has no base inside it: the base is loaded on its own, first, then dropped
        base_loader = run("base", lambda: load_model_and_tokenizer(base["path"]), None, base_key)
        prompted(base_loader, None)
        del base_loader  # dropped before the tuned model loads
        model, tok = evaluation.load_tuned(base["path"], adapter_dir)
    else:
        model, tok = evaluation.load_tuned(base["path"], adapter_dir)
        with model.disable_adapter():
            base_tok = evaluation.load_tokenizer(base["path"])
            run("base", model, base_tok, base_key)
            prompted(model, base_tok)
            score_pairs("base", model, tok)
            if retention_prompts:
                answers = retention.base_answers(model, tok, cache_dir / "retention" / f"{base_key}.json",
                                                 n_prompts=retention_prompts)
    key = out["tuned_key"] = out["keys"]["tuned"] = tuned_key(base["content_sha256"], adapter_dir)
    with evaluation.merged(model):  # before the retention check, which needs the adapter apart (disable_adapter)
        run("tuned", model, tok, key)
        score_pairs("tuned", model, tok)
    if answers is not None:
        side = retention.side_by_side(model, tok, answers)
        out["retention"] = {"prompts": len(answers), "side_by_side": side,
                            "kl": {"tuned": retention.cached_kl(kl_cache(key), lambda: (model, tok), answers)}}
        log("retention (tuned)", len(side), len(side))  # the answers shown beside the base's; the KL is scored
    for name, extra_dir in (more or {}).items():
        key_ = out["keys"][name] = tuned_key(base["content_sha256"], extra_dir)
        with _switched(model, name, base["path"], Path(extra_dir), full) as (m, t):
            with evaluation.merged(m):
                run(name, m, t, key_)
                score_pairs(name, m, t)
            if answers is not None:
                out["retention"]["kl"][name] = retention.cached_kl(kl_cache(key_), lambda: (m, t), answers)
    if full:
        return out
    if champion is not None:
        loader, champ_key = champion
        loader = run("champion", _memo(loader), None, champ_key)
        if answers is not None:
            out["retention"]["kl"]["champion"] = retention.cached_kl(kl_cache(champ_key), loader, answers)
    return out


@contextmanager
def _switched(model, name: str, base_path, adapter_dir: Path, full: bool):
    """(model, tokenizer) with the adapter in `adapter_dir` active: loaded beside the tuned one into the same
    PeftModel (the base is not loaded again), and removed afterwards. A full fine-tune on either side has no
    shared base, so it is loaded on its own."""
    if full or evaluation.is_full_model(adapter_dir):
        yield evaluation.load_tuned(base_path, adapter_dir)
        return
    model.load_adapter(str(adapter_dir), adapter_name=name)
    model.set_adapter(name)
    try:
        yield model, evaluation.load_tokenizer(adapter_dir)
    finally:
        model.set_adapter("default")
        model.delete_adapter(name)


def _memo(loader: Callable):
    got = []

    def load():
        if not got:
            got.append(loader())
        return got[0]

    return load
