"""serve.multi_adapter_throughput and serve.multi_adapter_memory (`python -m bench serve` runs them after the
single-task figures): two tasks, two LoRA adapters on one base, served by one `ft-pipeline serve`.

The two registered models live in a temporary store: `task-a` is the champion's adapter from the pipeline's store
(`make run`'s), `task-b` a second adapter of the same shape (the champion's with its LoRA B matrices
halved: other weights, other answers); with no trained champion there, `task-a` is a random LoRA adapter on
the base model bench_serve serves (BENCH_SERVE_BASE) and `task-b` the same halved. Both register the base the
way the pipeline does (a copy with each version), so the server finds it is one base by its content.

Throughput: the same greedy requests (the demo holdout prompts, alternating task-a and task-b) sent by 16 clients
to one server serving both tasks (mixed batches), ÷ the same requests when each task is served alone (a server
with `--model task-a` gets task-a's requests, then one with `--model task-b` task-b's). Goal >= 0.8.
Memory: the resident set (RSS) of the server serving both, after both answered, ÷ that of the server serving
task-a alone after it answered. Goal <= 1.2."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from bench._report import bench_line

TASKS = ("task-a", "task-b")


def _second_adapter(src: Path, out: Path) -> Path:
    """A copy of the adapter in `src` with every LoRA B matrix halved."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, out)
    weights = load_file(out / "adapter_model.safetensors")
    save_file({k: v * 0.5 if "lora_B" in k else v for k, v in weights.items()}, out / "adapter_model.safetensors")
    return out


def _random_adapter(base: Path, out: Path) -> Path:
    """A LoRA adapter with random weights (init_lora_weights=False) on `base`, saved with the base's tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model

    from ft_pipeline.model.base_models import load_model_and_tokenizer

    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer(base)
    cfg = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(model, cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def two_task_store(tmp: Path, pipeline_uri: str) -> str:
    """A temporary tracking store holding task-a and task-b (champion each), made from the champion of
    `pipeline_uri` (bench_serve's store); returns its URI."""
    import mlflow

    from ft_pipeline.registry import versions as registry

    tmp.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(pipeline_uri)
    champ = registry.champion("ft-pipeline-adapter")
    local = Path(mlflow.artifacts.download_artifacts(f"models:/ft-pipeline-adapter/{champ.version}",
                                                     dst_path=str(tmp / "champion")))
    flavor = mlflow.models.Model.load(str(local)).flavors["python_function"]
    files = {k: local / v["path"] for k, v in flavor["artifacts"].items()}
    if "base_model" in files:
        base, first = files["base_model"], files["adapter"]
        print(f"# multi-adapter: task-a = the champion's adapter (version {champ.version})", flush=True)
    else:  # bench_serve's stand-in store: the base model itself is the champion
        base = files["adapter"]
        first = _random_adapter(base, tmp / "adapter-a")
        print("# multi-adapter: no trained champion; task-a = a random LoRA adapter on the base model", flush=True)
    second = _second_adapter(first, tmp / "adapter-b")
    uri = f"sqlite:///{tmp / 'multi.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("multi", artifact_location=(tmp / "artifacts").as_uri())
    for name, adapter in zip(TASKS, (first, second)):
        with mlflow.start_run(experiment_id=exp) as run:
            info = registry.log_adapter_model(Path(adapter), {"source": "builtin", "path": str(base)})
        mv, _ = registry.register(info.model_uri, name, run.info.run_id, {})
        registry.set_champion(name, str(mv.version))
    return uri


def _serve(uri: str, cwd: Path, *models: str):
    from ft_pipeline_tests._serving import start_cli_server

    args = [a for m in models for a in ("--model", m)]
    return start_cli_server({**os.environ, "MLFLOW_TRACKING_URI": uri}, *args, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _rss(proc) -> int:
    import psutil

    return psutil.Process(proc.pid).memory_info().rss


def _stop(proc) -> None:
    proc.terminate()
    proc.wait(timeout=60)


def report(tmp: Path, pipeline_uri: str, convs: list, clients: int, run, cwd: Path) -> bool:
    """Both figures; `run(url, convs, clients, model=...)` is bench_serve's sender."""
    uri = two_task_store(tmp, pipeline_uri)
    models = [TASKS[i % 2] for i in range(len(convs))]
    mine = {t: [c for c, m in zip(convs, models) if m == t] for t in TASKS}
    alone, t_alone, rss_one = {}, 0.0, None
    for task in TASKS:
        proc, url = _serve(uri, cwd, task)
        try:
            run(url, mine[task][:2], 1, model=task)  # warm-up
            alone[task], t = run(url, mine[task], clients, model=task)
            t_alone += t
            rss_one = rss_one or _rss(proc)  # task-a's server, after answering
        finally:
            _stop(proc)
    proc, url = _serve(uri, cwd)  # every registered model with the alias: both
    try:
        for task in TASKS:
            run(url, mine[task][:2], 1, model=task)  # warm-up: both loaded
        both, t_both = run(url, convs, clients, model=models)
        rss_two = _rss(proc)
    finally:
        _stop(proc)
    k = {t: 0 for t in TASKS}
    same = 0
    for m, res in zip(models, both):
        same += res[0] == alone[m][k[m]][0]
        k[m] += 1
    tokens_alone = sum(n for t in TASKS for _, n, _ in alone[t])
    tokens_both = sum(n for _, n, _ in both)
    print(f"# multi-adapter: {len(convs)} requests over {TASKS}, {clients} clients: together "
          f"{tokens_both / t_both:.0f} completion tok/s ({t_both:.1f}s), each alone {tokens_alone / t_alone:.0f} "
          f"({t_alone:.1f}s); identical greedy answers {same}/{len(convs)}; RSS {rss_two / 2**20:.0f} MiB with two "
          f"tasks, {rss_one / 2**20:.0f} MiB with one", flush=True)
    ok = bench_line("serve.multi_adapter_throughput", (tokens_both / t_both) / (tokens_alone / t_alone), "x", ">=",
                    0.8)
    return bench_line("serve.multi_adapter_memory", rss_two / rss_one, "x", "<=", 1.2) and ok and same == len(convs)
