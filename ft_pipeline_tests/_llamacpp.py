"""llama.cpp through llama-cpp-python, as the llamacpp test tier and `make bench BENCH=export` run it.

llama.cpp's extra CPU buffer types are off (what `llama-cli --no-repack` does): with them, llama-cpp-python 0.3.36
built with -DGGML_NATIVE=ON on this machine kind (a VM whose CPU reports AMX) dies with SIGSEGV inside llama_decode
on any batch of two tokens or more, the packaged SmolLM2 file included; with them off it runs. llama-cpp-python has
no argument for it, so its default model parameters are wrapped while the model loads."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


@contextlib.contextmanager
def _no_extra_buffer_types():
    import llama_cpp.llama_cpp as lib

    default = lib.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    lib.llama_model_default_params = params
    try:
        yield
    finally:
        lib.llama_model_default_params = default


def load(path: Path, lora: Path | None = None, n_ctx: int = 2048):
    """A llama_cpp.Llama on the GGUF at `path` (with the LoRA adapter GGUF `lora` applied), on OMP_NUM_THREADS
    threads (a pytest-xdist worker's share of the cores: conftest.py), else every core."""
    from llama_cpp import Llama

    with _no_extra_buffer_types():
        return Llama(model_path=str(path), lora_path=str(lora) if lora else None, n_ctx=n_ctx,
                     n_threads=int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count()), seed=0, verbose=False)
