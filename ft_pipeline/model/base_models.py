"""Base models: `builtin:tiny` (a small Llama and byte-level tokenizer built locally, deterministically, with no
network), a GGUF file (`gguf:/abs/path.gguf`, or the packaged `smollm2-135m-instruct`), a local model directory,
or a Hugging Face Hub id. All of them end as a local directory of safetensors weights, config and tokenizer,
loaded by the same code."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ft_pipeline import knobs

BUILTIN_TINY = "builtin:tiny"
SPECIAL_TOKENS = ["<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# {% generation %} marks the tokens that carry loss (TRL's assistant_only_loss); an assistant message with
# weight 0 is shown to the model but not supervised.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}<|assistant|>"
    "{% if message.get('weight', 1) != 0 %}{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}"
    "{% else %}{{ message['content'] }}<|end|>{% endif %}"
    "{% else %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TINY_ARCH = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=4, max_position_embeddings=2048)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_NOT_A_SPEC = ("is neither 'builtin:tiny', 'smollm2-135m-instruct', a GGUF file ('gguf:/abs/model.gguf'), an "
               "absolute or ./relative local directory, nor a Hub id like 'Qwen/Qwen2.5-0.5B-Instruct[@revision]'")
_WEIGHT_FILES = ("*.safetensors", "*.json", "tokenizer*", "*.model", "*.txt", "*.jinja")


KNOBS = {"seed": knobs.NON_NEGATIVE}


@dataclass
class BaseModelInfo:
    spec: str  # what the user asked for
    path: Path  # local directory with config, safetensors weights and tokenizer
    source: str  # builtin | gguf | local | hub
    revision: str | None  # hub commit, or None
    content_sha256: str  # hash of the files that define the model

    def to_json(self) -> dict:
        return {"spec": self.spec, "path": str(self.path), "source": self.source, "revision": self.revision,
                "content_sha256": self.content_sha256}


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|end|>",
                                   chat_template=CHAT_TEMPLATE, model_max_length=TINY_ARCH["max_position_embeddings"])


def build_tiny(out_dir: Path, seed: int = 0) -> Path:
    """Write the builtin tiny Llama (random init from `seed`) and its tokenizer to `out_dir`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         bos_token_id=None, tie_word_embeddings=False, **TINY_ARCH)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir


def content_hash(model_dir: Path) -> str:
    """sha256 over the weights, config and tokenizer files (names and bytes), in name order."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(model_dir).rglob("*") if p.is_file() and not p.name.startswith("."))
    for p in files:
        h.update(p.relative_to(model_dir).as_posix().encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def resolve_base_model(spec: str, models_dir: Path, seed: int = 0) -> BaseModelInfo:
    """Materialize the base model named by `spec` as a local directory and describe it."""
    from ft_pipeline.model import gguf_models

    models_dir = Path(models_dir)
    if spec in gguf_models.PACKAGED or spec.startswith(gguf_models.GGUF_PREFIX):
        src = gguf_models.packaged_gguf(spec) if spec in gguf_models.PACKAGED else \
            Path(spec[len(gguf_models.GGUF_PREFIX):]).expanduser()
        if not src.is_absolute():
            raise ValueError(f"base model {spec!r}: give the GGUF file as an absolute path, gguf:/path/to/model.gguf")
        path = gguf_models.convert_gguf(src, models_dir / "gguf" / gguf_models.model_dir_name(src))
        check_model_dir(path)
        return BaseModelInfo(spec, path, "gguf", None, content_hash(path))
    if spec == BUILTIN_TINY:
        path = build_tiny(models_dir / "builtin-tiny", seed=seed)
        return BaseModelInfo(spec, path, "builtin", None, content_hash(path))
    local = Path(spec).expanduser()
    if local.is_absolute() or spec.startswith("."):
        check_model_dir(local)
        return BaseModelInfo(spec, local.resolve(), "local", None, content_hash(local))
    if _HUB_ID.match(spec):
        from huggingface_hub import snapshot_download

        repo_id, _, revision = spec.partition("@")
        path = models_dir / "hub" / repo_id.replace("/", "--")
        path = Path(snapshot_download(repo_id, revision=revision or None, local_dir=path,
                                      allow_patterns=list(_WEIGHT_FILES)))
        check_model_dir(path)
        commit = (path / ".cache" / "huggingface" / "download")
        rev = revision or _hub_commit(commit)
        return BaseModelInfo(spec, path, "hub", rev, content_hash(path))
    raise ValueError(f"base model {spec!r} {_NOT_A_SPEC}")


def spec_problem(spec: str) -> str | None:
    """What is wrong with a base model spec, found without loading or downloading anything (a Hub id is checked
    for its form only), or None."""
    from ft_pipeline.model import gguf_models

    if spec == BUILTIN_TINY or _HUB_ID.match(spec) or spec in gguf_models.PACKAGED:
        return None
    if spec.startswith(gguf_models.GGUF_PREFIX):
        path = Path(spec[len(gguf_models.GGUF_PREFIX):]).expanduser()
        if not path.is_absolute():
            return f"{spec!r}: give the GGUF file as an absolute path, gguf:/path/to/model.gguf"
        return None if path.is_file() else f"GGUF file {path} does not exist"
    local = Path(spec).expanduser()
    if not (local.is_absolute() or spec.startswith(".")):
        return f"{spec!r} {_NOT_A_SPEC}"
    if not local.is_dir():
        return f"local base model directory {local} does not exist"
    try:
        check_model_dir(local)
    except (FileNotFoundError, ValueError) as e:
        return str(e)
    return None


def _hub_commit(meta_dir: Path) -> str | None:
    for p in sorted(meta_dir.rglob("*.metadata")) if meta_dir.exists() else []:
        first = p.read_text().splitlines()[:1]
        if first:
            return first[0].strip()
    return None


def check_model_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a model directory (no config.json)")
    if not any(path.glob("*.safetensors")):
        raise FileNotFoundError(f"{path}: no *.safetensors weights; "
                                "only safetensors are loaded (convert .bin weights first)")
    cfg = json.loads((path / "config.json").read_text())
    if cfg.get("auto_map"):
        raise ValueError(f"{path}: the model needs custom code (auto_map in config.json); "
                         "set trust_remote_code in a preset only if you trust it")


def load_model_and_tokenizer(path: Path | str, dtype: str = "float32", device: str = "cpu",
                             trust_remote_code: bool = False):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype), use_safetensors=True,
                                                 trust_remote_code=trust_remote_code).to(device)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def load_tokenizer(path: Path | str, trust_remote_code: bool = False):
    """Only the tokenizer (with its chat template) of a base model directory: what the data layer measures with."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
