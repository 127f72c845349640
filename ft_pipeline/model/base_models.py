"""Base models: `builtin:tiny` (a small Llama and byte-level tokenizer built locally, deterministically, with no
network), `builtin:smollm2-shape` (the same for a random Llama of SmolLM2-135M's exact shape: see below),
a GGUF file (`gguf:/abs/path.gguf`, or the packaged `smollm2-135m-instruct`), a local model directory,
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
BUILTIN_SMOLLM2_SHAPE = "builtin:smollm2-shape"  # build_smollm2_shape
BUILTINS = (BUILTIN_TINY, BUILTIN_SMOLLM2_SHAPE)
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
_NOT_A_SPEC = ("is neither 'builtin:tiny', 'builtin:smollm2-shape', 'smollm2-135m-instruct', a GGUF file "
               "('gguf:/abs/model.gguf'), an absolute or ./relative local directory, nor a Hub id like "
               "'Qwen/Qwen2.5-0.5B-Instruct[@revision]'")
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
    return _save_builtin(LlamaForCausalLM(config), tok, out_dir)


def _save_builtin(model, tok, out_dir: Path) -> Path:
    """Save a builtin model (generating with its tokenizer's pad and end tokens) and its tokenizer to `out_dir`."""
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir


# builtin:smollm2-shape: a Llama of SmolLM2-135M's exact shape (30 layers, hidden 576, MLP 1536, 9 heads, 3 KV heads,
# a tied 49,152-token vocabulary: 134,515,008 parameters), random from a seed and built here with no download, like
# builtin:tiny. Its speed, memory and MFU are the real model's (the weights do not change the arithmetic); what it
# answers means nothing. Its tokenizer is a byte-level BPE trained on the committed demo drops (5,585 tokens learned,
# splitting words and JSON much as SmolLM2's does, so examples are about as long in tokens), its vocabulary padded
# to 49,152 with entries no text maps to, so the embedding and LM head have the real size. Deterministic: the same
# seed (and demo drops) gives the same content hash.
# SmolLM2-135M's config.json (HuggingFaceTB/SmolLM2-135M), less its token ids: this tokenizer has its own.
SMOLLM2_ARCH = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, head_dim=64, hidden_act="silu",
                    max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
                    initializer_range=0.041666666666666664, tie_word_embeddings=True)
# The committed demo drops the tokenizer learns from, in this order (not FT_PIPELINE_RAW_DIR: the model must not
# depend on where a user keeps their drops).
CORPUS = ("2026-01-support_chat.jsonl", "2026-02-helpdesk_alpaca.json", "2026-03-tickets.csv")


def _corpus_lines():
    from ft_pipeline.settings import REPO_ROOT

    for name in CORPUS:
        yield from (REPO_ROOT / "data" / "raw" / name).read_text(encoding="utf-8").splitlines()


def build_smollm2_shape_tokenizer():
    """The byte-level BPE (special tokens first, as builtin:tiny's), padded to SMOLLM2_ARCH's vocabulary size."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    size = SMOLLM2_ARCH["vocab_size"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus_lines(), trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    # Entries no merge produces: they only make the vocabulary as large as the model's.
    vocab.update({f"<|unused_{i}|>": i for i in range(len(vocab), size)})
    tok = Tokenizer.from_str(json.dumps(spec))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|end|>",
                                   chat_template=CHAT_TEMPLATE,
                                   model_max_length=SMOLLM2_ARCH["max_position_embeddings"])


def build_smollm2_shape(out_dir: Path, seed: int = 0) -> Path:
    """Write the model (random init from `seed`, saved in bf16 as SmolLM2's own weights are) and its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_smollm2_shape_tokenizer()
    assert len(tok) == SMOLLM2_ARCH["vocab_size"], len(tok)
    config = LlamaConfig(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
                         **SMOLLM2_ARCH)
    torch.manual_seed(seed)
    return _save_builtin(LlamaForCausalLM(config).to(torch.bfloat16), tok, out_dir)


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
    if spec == BUILTIN_SMOLLM2_SHAPE:
        path = build_smollm2_shape(models_dir / "builtin-smollm2-shape", seed=seed)
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

    if spec in BUILTINS or _HUB_ID.match(spec) or spec in gguf_models.PACKAGED:
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
