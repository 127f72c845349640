"""GGUF export: a model directory (the merged model, or a base) as one `.gguf` file for llama.cpp, Ollama and
LM Studio, and a PEFT LoRA adapter as a GGUF adapter (`llama-cli --lora`, Ollama's `ADAPTER`).

The layout follows llama.cpp's own converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py): tensor names
from gguf's name map, the Llama q/k rows permuted into llama.cpp's rotary layout (Qwen2 is written unpermuted),
no `output.weight` when the head is tied to the embeddings, norms and other 1-D tensors in F32, and a tensor
whose rows do not split into Q8_0's blocks of 32 in F16. The tokenizer's metadata is copied key for key from the
GGUF the base came from when there is one (`gguf_source.json` in the base directory names it), so llama.cpp
sees the vocabulary and pre-tokenizer it shipped with; otherwise it is built from the Hugging Face tokenizer
(byte-level BPE: tokens, token types, merges, special ids, add_bos, chat template)."""

from __future__ import annotations

import json
import math
from pathlib import Path

TYPES = ("f32", "f16", "q8_0")
# Hugging Face architecture -> (llama.cpp architecture, whether q/k rows are permuted for llama.cpp's rope)
ARCHS = {"LlamaForCausalLM": ("llama", True), "MistralForCausalLM": ("llama", True),
         "Qwen2ForCausalLM": ("qwen2", False)}
PRE_TOKENIZERS = {"qwen2": "qwen2"}  # model_type -> tokenizer.ggml.pre for a tokenizer built here; else gpt-2
Q8_BLOCK = 32


class GgufExportError(ValueError):
    """Why this model or adapter cannot be written as GGUF, in one line."""


def _ftypes():
    from gguf import GGMLQuantizationType as Q
    from gguf import LlamaFileType as F

    return {"f32": (Q.F32, F.ALL_F32), "f16": (Q.F16, F.MOSTLY_F16), "q8_0": (Q.Q8_0, F.MOSTLY_Q8_0)}


def architecture(config: dict) -> tuple[str, bool]:
    archs = config.get("architectures") or [config.get("model_type", "?")]
    if archs[0] not in ARCHS:
        raise GgufExportError(f"GGUF export supports {', '.join(sorted(ARCHS))}; this model is {archs[0]}")
    return ARCHS[archs[0]]


def permute(w, n_head: int):
    """llama.cpp's rotary layout for a q or k projection (or a LoRA B of one): rows regrouped per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, n_head: int):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_theta(config: dict) -> float:
    rope = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    kind = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise GgufExportError(f"GGUF export writes plain rope only; this model uses rope scaling {kind!r}")
    return float(rope.get("rope_theta") or config.get("rope_theta") or 10000.0)


def head_counts(config: dict) -> tuple[int, int]:
    n_head = int(config["num_attention_heads"])
    return n_head, int(config.get("num_key_value_heads") or n_head)


def gguf_name(hf_name: str, arch: str, n_blocks: int) -> str:
    import gguf

    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_blocks)
    name = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise GgufExportError(f"GGUF export: no llama.cpp name for tensor {hf_name}")
    return name


def _tensor_type(name: str, data, ftype: str):
    from gguf import GGMLQuantizationType as Q

    if data.ndim == 1 or name.endswith("_norm.weight"):
        return Q.F32
    qtype = _ftypes()[ftype][0]
    if qtype == Q.Q8_0 and data.shape[-1] % Q8_BLOCK:
        return Q.F16  # rows that do not split into Q8_0 blocks, as llama.cpp does
    return qtype


def add_tensor(writer, name: str, data, ftype: str) -> None:
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    qtype = _tensor_type(name, data, ftype)
    data = np.ascontiguousarray(data, dtype=np.float32)
    if qtype == Q.F32:
        writer.add_tensor(name, data)
    elif qtype == Q.F16:
        writer.add_tensor(name, data.astype(np.float16))
    else:
        writer.add_tensor(name, quants.quantize(data, qtype), raw_dtype=qtype)


def _hparams(writer, config: dict, arch: str) -> None:
    n_head, n_kv = head_counts(config)
    hidden = int(config["hidden_size"])
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(hidden)
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(int(config["vocab_size"]))
    writer.add_rope_dimension_count(int(config.get("head_dim") or hidden // n_head))


def source_gguf(model_dir: Path, candidates: list[Path] = ()) -> Path | None:
    """The GGUF file the model in `model_dir` was converted from (its `gguf_source.json`), found among the
    packaged models and `candidates` by name, size and sha256; None when the model came from no GGUF or the
    file is not on this machine."""
    from ft_pipeline.data.formats import sha256_file
    from ft_pipeline.model import gguf_models

    meta = Path(model_dir) / gguf_models.SOURCE_FILE
    if not meta.is_file():
        return None
    src = json.loads(meta.read_text())
    found = [Path(c) for c in candidates]
    for short, (_, file_name) in gguf_models.PACKAGED.items():
        if file_name == src["file"]:
            try:
                found.append(gguf_models.packaged_gguf(short))
            except gguf_models.GgufError:
                pass
    for path in found:
        if path.name == src["file"] and path.is_file() and path.stat().st_size == src["size"] \
                and sha256_file(path) == src["sha256"]:
            return path.resolve()
    return None


def copy_tokenizer_metadata(writer, gguf_path: Path) -> int:
    """Every `tokenizer.*` key of `gguf_path`, written as it is there; returns how many."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(gguf_path))
    n = 0
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = GGUFValueType(field.types[0])
        sub = GGUFValueType(field.types[-1]) if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
        n += 1
    return n


def build_tokenizer_metadata(writer, model_dir: Path, config: dict) -> None:
    """The tokenizer of `model_dir` as llama.cpp's gpt2 (byte-level BPE) vocabulary, as convert_hf_to_gguf.py
    writes it: every id up to the model's vocab size (unused ids as `[PADn]`), special added tokens as
    control tokens, other added tokens as user-defined, the merges, the special ids and the chat template."""
    from gguf import TokenType
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    backend = json.loads(tok.backend_tokenizer.to_str())
    model = backend["model"]
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(backend.get("pre_tokenizer")):
        raise GgufExportError("GGUF export builds byte-level BPE tokenizers only; this one is "
                              f"{model.get('type')} (export from a GGUF base, whose tokenizer is copied, instead)")
    vocab = tok.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    added = {a["content"]: a for a in backend.get("added_tokens", [])}
    size = max(int(config["vocab_size"]), len(by_id))
    tokens, types = [], []
    for i in range(size):
        t = by_id.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif t in added:
            tokens.append(t)
            types.append(TokenType.CONTROL if added[t].get("special") else TokenType.USER_DEFINED)
        else:
            tokens.append(t)
            types.append(TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZERS.get(config.get("model_type"), "gpt-2"))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if merges:
        writer.add_token_merges(merges)
    else:  # builtin:tiny's bytes-only vocabulary: GGUF has no empty arrays, and transformers then wants scores
        writer.add_token_scores([0.0] * len(tokens))
    for kind, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        token_id = getattr(tok, f"{kind}_token_id", None)
        if token_id is not None:
            add(int(token_id))
    writer.add_add_bos_token(bool(getattr(tok, "add_bos_token", False)) and tok.bos_token_id is not None)
    if tok.chat_template:
        from ft_pipeline.model.chat_templates import strip_generation_markers

        writer.add_chat_template(strip_generation_markers(tok.chat_template))


def _state(model_dir: Path) -> dict:
    """The model's tensors as float32 numpy arrays, by Hugging Face name."""
    from safetensors import safe_open

    out = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                out[k] = st.get_tensor(k).float().numpy()
    return out


def write_model(model_dir: Path | str, out_path: Path | str, ftype: str = "q8_0", name: str | None = None,
                source: Path | None = None) -> dict:
    """Write the model in `model_dir` (safetensors, config, tokenizer) as one GGUF file at `out_path`; the
    tokenizer metadata is copied from `source` (the GGUF the base came from) when given. Returns what was
    written: architecture, type, tensor count, where the tokenizer came from."""
    import gguf

    if ftype not in TYPES:
        raise GgufExportError(f"GGUF type {ftype!r}: choose one of {', '.join(TYPES)}")
    model_dir, out_path = Path(model_dir), Path(out_path)
    config = json.loads((model_dir / "config.json").read_text())
    arch, permuted = architecture(config)
    n_blocks = int(config["num_hidden_layers"])
    n_head, n_kv = head_counts(config)
    state = _state(model_dir)
    tied = bool(config.get("tie_word_embeddings"))
    if tied:
        state.pop("lm_head.weight", None)
    tmp = out_path.with_name(out_path.name + ".partial")
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or model_dir.name)
    _hparams(writer, config, arch)
    writer.add_file_type(_ftypes()[ftype][1])
    if source is not None:
        copy_tokenizer_metadata(writer, source)
    else:
        build_tokenizer_metadata(writer, model_dir, config)
    for hf_name, data in state.items():
        if permuted and hf_name.endswith("q_proj.weight"):
            data = permute(data, n_head)
        elif permuted and hf_name.endswith("k_proj.weight"):
            data = permute(data, n_kv)
        add_tensor(writer, gguf_name(hf_name, arch, n_blocks), data, ftype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out_path)
    return {"file": out_path.name, "architecture": arch, "type": ftype, "tensors": len(state),
            "tied_embeddings": tied, "tokenizer": f"copied from {source.name}" if source else "built"}


def lora_refusal(peft_config: dict) -> str | None:
    """Why this PEFT adapter has no GGUF adapter form, or None."""
    if peft_config.get("peft_type", "LORA") != "LORA":
        return f"a {peft_config.get('peft_type')} adapter has no GGUF adapter form (only LoRA)"
    if peft_config.get("modules_to_save"):
        return (f"the adapter also trains whole modules ({', '.join(peft_config['modules_to_save'])}; "
                "modules_to_save), which a GGUF LoRA adapter cannot carry: export the merged model instead")
    if peft_config.get("use_dora"):
        return "a DoRA adapter has no GGUF adapter form: export the merged model instead"
    if peft_config.get("rank_pattern") or peft_config.get("alpha_pattern"):
        return "the adapter's rank or alpha differs per module, which a GGUF adapter (one alpha) cannot carry"
    targets = peft_config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    if any(t in ("embed_tokens", "lm_head") for t in targets):
        return "the adapter has LoRA on embed_tokens or lm_head, which llama.cpp adapters do not support"
    return None


def write_adapter(adapter_dir: Path | str, base_config: dict, out_path: Path | str, ftype: str = "f16",
                  name: str | None = None) -> dict:
    """Write the PEFT LoRA adapter in `adapter_dir` as a GGUF adapter for the base described by `base_config`:
    `lora_a` (r, in) and `lora_b` (out, r) per target, lora_b's rows permuted for q/k like the base weights,
    and `adapter.lora.alpha` such that alpha / r is PEFT's scale (rsLoRA's alpha / sqrt(r) too)."""
    import gguf
    from safetensors.numpy import load_file

    adapter_dir, out_path = Path(adapter_dir), Path(out_path)
    peft_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if why := lora_refusal(peft_config):
        raise GgufExportError(why)
    arch, permuted = architecture(base_config)
    n_blocks = int(base_config["num_hidden_layers"])
    n_head, n_kv = head_counts(base_config)
    r, alpha = int(peft_config["r"]), float(peft_config["lora_alpha"])
    if peft_config.get("use_rslora"):
        alpha *= math.sqrt(r)
    state = load_file(str(adapter_dir / "adapter_model.safetensors"))
    tmp = out_path.with_name(out_path.name + ".partial")
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name or adapter_dir.name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    pairs = 0
    for key in sorted(state):
        if ".lora_A." not in key:
            if ".lora_B." not in key:
                raise GgufExportError(f"the adapter holds a tensor a GGUF LoRA adapter cannot carry: {key}")
            continue
        module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        a = state[key].astype("float32")
        b = state[key.replace(".lora_A.", ".lora_B.")].astype("float32")
        if permuted and module.endswith("q_proj"):
            b = permute(b, n_head)
        elif permuted and module.endswith("k_proj"):
            b = permute(b, n_kv)
        base_name = gguf_name(module + ".weight", arch, n_blocks)
        if base_name.startswith(("token_embd", "output.")):
            raise GgufExportError("the adapter has LoRA on embed_tokens or lm_head, which llama.cpp adapters "
                                  "do not support")
        add_tensor(writer, base_name + ".lora_a", a, "f32" if ftype == "f32" else "f16")
        add_tensor(writer, base_name + ".lora_b", b, "f32" if ftype == "f32" else "f16")
        pairs += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out_path)
    return {"file": out_path.name, "architecture": arch, "rank": r, "alpha": alpha, "pairs": pairs}
