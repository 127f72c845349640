"""The GPU check (issue 27): one prepared run for a GPU machine that has no registry and no Hub, 15 minutes of
which 8 for this. `make gpu-bundle` builds here the wheels that machine lacks (bundle.py); `make gpu-check` there
(or `python3 -m ft_pipeline.gpu_check`) unpacks them, measures a bf16 torch.mm rate, builds
builtin:smollm2-shape, trains LoRA on the demo data through `python -m ft_pipeline.model.train`
(configs/gpu_check.yaml), measures padding, evaluates with batched generation, runs the gpu test tier, and writes
gpu-check.json and gpu-check.md into $OUT (runner.py, steps.py, report.py). `GPU_CHECK_DRY=1` runs the same steps
on a CPU with builtin:tiny, hiding what the GPU machine lacks (dry_site/). Never imports dagster or mlflow."""
