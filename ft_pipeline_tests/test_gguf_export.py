"""GGUF export on builtin:tiny-shaped models: transformers loads the written file back and answers greedily as
the merged model does (F32 all, Q8_0 at least 98%), its chat template renders the training prompt ids, tied
embeddings, Qwen2, tensor types, and the LoRA adapter form (names, shapes, alpha, the q/k permutation)."""

import json

import numpy as np
import pytest
import torch

from ft_pipeline.evaluation.scoring import chat_prompt_ids
from ft_pipeline.export import gguf as G
from ft_pipeline.export.merged import merge_adapter
from ft_pipeline.model.base_models import build_tiny_tokenizer, load_model_and_tokenizer

QUESTIONS = ["where is my order ORD-{}?", "cancel order {} please", "my parcel {} arrived broken", "hi {}",
             "refund {} now", "what is {} + 1?", "write a haiku about {}", "translate {} to French",
             "the app crashes on screen {}", "change my address to {} Main St"]


def conversations(n=50):
    out = []
    for i in range(n):
        conv = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)].format(100 + 7 * i)}]
        if i % 3 == 0:
            conv = [{"role": "system", "content": "Answer in JSON."}] + conv
        if i % 5 == 0:
            conv = conv + [{"role": "assistant", "content": '{"intent": "other"}'}, {"role": "user", "content": "and?"}]
        out.append(conv)
    return out


def lora(base_dir, out_dir, **extra):
    """A LoRA on every linear layer of the base with random A and B (no training needed to be non-zero)."""
    from peft import LoraConfig, get_peft_model

    model, tok = load_model_and_tokenizer(base_dir)
    torch.manual_seed(1)
    cfg = LoraConfig(r=8, lora_alpha=16, init_lora_weights=False, task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                     **extra)
    peft = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.mul_(0.5)
    peft.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def merged_dir(tiny_base, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gguf-export")
    return merge_adapter(tiny_base, lora(tiny_base, tmp / "adapter"), tmp / "merged")


def load_gguf(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": path.name}
    return (AutoModelForCausalLM.from_pretrained(str(path.parent), **kw).eval(),
            AutoTokenizer.from_pretrained(str(path.parent), **kw))


def greedy_ids(model, tok, convs, n=16) -> list[list[int]]:
    """Each conversation's greedy answer as token ids (ids, not text: a random model's bytes need not decode),
    generated in one left-padded batch as evaluation does."""
    from ft_pipeline.evaluation.scoring import left_padded

    ids, mask = left_padded(chat_prompt_ids(tok, convs), tok.pad_token_id)
    with torch.inference_mode():
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return [[t for t in row if t != tok.pad_token_id] for row in gen[:, ids.shape[1]:].tolist()]


def parity(ref, model, tok, convs) -> tuple[int, list[float]]:
    """(how many greedy answers are identical, and for each other one the reference's logit gap at the first
    token where they part: its top logit minus the logit of the token the GGUF model chose there)."""
    want, got = greedy_ids(ref, tok, convs), greedy_ids(model, tok, convs)
    gaps = []
    for prompt, a, b in zip(chat_prompt_ids(tok, convs), want, got, strict=True):
        if a == b:
            continue
        k = next(i for i, (x, y) in enumerate(zip(a + [-1], b + [-1])) if x != y)
        with torch.inference_mode():
            logits = ref(torch.tensor([prompt + a[:k]])).logits[0, -1]
        other = b[k] if k < len(b) else tok.eos_token_id
        gaps.append(round(float(logits.max() - logits[other]), 5))
    return sum(a == b for a, b in zip(want, got, strict=True)), gaps


@pytest.mark.parametrize("ftype", ["f32", "q8_0"])
def test_the_gguf_answers_the_prompts_as_the_merged_model_does(merged_dir, tmp_path, ftype):
    """F32: every answer identical. Q8_0 on this random model: an answer may part only at a near-tie, where the
    merged model's own top two logits are closer than Q8_0's rounding moves them (the 98% bar is for a trained
    model: test_gguf.py checks it on SmolLM2)."""
    out = tmp_path / f"model-{ftype}.gguf"
    info = G.write_model(merged_dir, out, ftype)
    assert info["tokenizer"] == "built" and info["architecture"] == "llama"
    ref, tok = load_model_and_tokenizer(merged_dir)
    model, gtok = load_gguf(out)
    convs = conversations(40)
    assert chat_prompt_ids(gtok, convs) == chat_prompt_ids(tok, convs)
    same, gaps = parity(ref, model, tok, convs)
    print(f"\n{ftype}: {same}/{len(convs)} greedy answers identical; first-difference logit gaps {gaps}")
    if ftype == "f32":
        assert same == len(convs)
    else:
        assert same >= len(convs) * 0.8 and all(g < 0.02 for g in gaps)


def test_the_gguf_chat_template_renders_the_training_prompt_ids(merged_dir, tmp_path):
    out = G.write_model(merged_dir, tmp_path / "m.gguf", "f32")
    _, gtok = load_gguf(tmp_path / out["file"])
    convs = conversations(12)
    assert chat_prompt_ids(gtok, convs) == chat_prompt_ids(build_tiny_tokenizer(), convs)
    assert gtok.eos_token == "<|end|>" and gtok.pad_token == "<|pad|>"


def tiny_qwen2(out_dir):
    """A Qwen2 with tied embeddings and rows of 80 (no Q8_0 blocks of 32), with the tiny tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = build_tiny_tokenizer()
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=80, intermediate_size=144, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.normal_(0, 0.5)  # zero biases would hide a misplaced one
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def test_qwen2_with_tied_embeddings_loads_back_with_the_same_logits_and_the_right_tensor_types(tmp_path):
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFReader

    src = tiny_qwen2(tmp_path / "qwen2")
    ref, tok = load_model_and_tokenizer(src)
    ids = torch.tensor(chat_prompt_ids(tok, conversations(1)))
    for ftype in ("f32", "q8_0"):
        out = tmp_path / f"qwen2-{ftype}.gguf"
        assert G.write_model(src, out, ftype)["tied_embeddings"]
        types = {t.name: t.tensor_type for t in GGUFReader(str(out)).tensors}
        assert "output.weight" not in types and "token_embd.weight" in types
        assert types["blk.0.attn_norm.weight"] == Q.F32 and types["blk.0.attn_q.bias"] == Q.F32
        model, _ = load_gguf(out)
        with torch.inference_mode():
            diff = (model(ids).logits - ref(ids).logits).abs().max().item()
        if ftype == "f32":
            assert diff == 0.0
        else:
            # rows of 80 and 144 do not split into blocks of 32: every matrix falls back to F16
            assert {types[n] for n in types if not n.endswith(("norm.weight", ".bias"))} == {Q.F16}
            assert diff < 1e-2


def tiny_gqa_llama(out_dir):
    """A Llama with grouped-query attention (4 query heads, 2 KV heads, as SmolLM2's 9 and 3), tied embeddings
    and a non-default rope theta: the k rows are permuted per KV head, not per query head."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=None,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def test_a_grouped_query_llama_loads_back_with_the_same_logits(tmp_path):
    from safetensors.numpy import load_file

    src = tiny_gqa_llama(tmp_path / "gqa")
    out = tmp_path / "gqa.gguf"
    G.write_model(src, out, "f32")
    ref, tok = load_model_and_tokenizer(src)
    model, _ = load_gguf(out)
    assert model.config.num_key_value_heads == 2
    ids = torch.tensor(chat_prompt_ids(tok, conversations(1)))
    with torch.inference_mode():
        assert (model(ids).logits - ref(ids).logits).abs().max().item() < 1e-5
    k = read_tensors(out)["blk.1.attn_k.weight"]
    hf = load_file(str(src / "model.safetensors"))["model.layers.1.self_attn.k_proj.weight"]
    assert k.shape == (64, 128)
    np.testing.assert_array_equal(G.unpermute(k, 2), hf)


def test_q8_0_quantizes_what_splits_into_blocks_and_keeps_norms_in_f32(merged_dir, tmp_path):
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFReader

    G.write_model(merged_dir, tmp_path / "m.gguf", "q8_0")
    types = {t.name: t.tensor_type for t in GGUFReader(str(tmp_path / "m.gguf")).tensors}
    assert types["output.weight"] == Q.Q8_0 and types["blk.3.ffn_down.weight"] == Q.Q8_0  # untied builtin:tiny
    assert types["output_norm.weight"] == Q.F32 and types["blk.0.ffn_norm.weight"] == Q.F32


def test_an_unsupported_architecture_is_one_clear_error(tmp_path, merged_dir):
    import shutil

    shutil.copytree(merged_dir, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPTNeoXForCausalLM"]}))
    with pytest.raises(G.GgufExportError, match="GGUF export supports .*; this model is GPTNeoXForCausalLM"):
        G.write_model(tmp_path / "m", tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def read_tensors(path) -> dict:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    return {t.name: dequantize(t.data, t.tensor_type).reshape(list(reversed(t.shape.tolist())))
            for t in GGUFReader(str(path)).tensors}


def test_the_adapter_gguf_applied_to_the_base_gguf_gives_the_merged_weights(tiny_base, merged_dir, tmp_path):
    from gguf import GGUFReader

    adapter = merged_dir.parent / "adapter"
    config = json.loads((tiny_base / "config.json").read_text())
    info = G.write_adapter(adapter, config, tmp_path / "adapter.gguf", "f32")
    assert info == {"file": "adapter.gguf", "architecture": "llama", "rank": 8, "alpha": 16.0, "pairs": 28}
    reader = GGUFReader(str(tmp_path / "adapter.gguf"))
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 16.0
    lora_t = read_tensors(tmp_path / "adapter.gguf")
    assert lora_t["blk.0.attn_q.weight.lora_a"].shape == (8, 128)  # PEFT's A (r, in) and B (out, r)
    assert lora_t["blk.0.attn_q.weight.lora_b"].shape == (128, 8)
    G.write_model(tiny_base, tmp_path / "base.gguf", "f32")
    G.write_model(merged_dir, tmp_path / "merged.gguf", "f32")
    base, merged = read_tensors(tmp_path / "base.gguf"), read_tensors(tmp_path / "merged.gguf")
    pairs = sorted(n.removesuffix(".lora_a") for n in lora_t if n.endswith(".lora_a"))
    assert len(pairs) == 28 and "blk.3.ffn_down.weight" in pairs
    for name in pairs:
        applied = base[name] + 16 / 8 * lora_t[name + ".lora_b"] @ lora_t[name + ".lora_a"]
        np.testing.assert_allclose(applied, merged[name], atol=2e-5, err_msg=name)
        assert not np.allclose(base[name], merged[name], atol=1e-3)  # the adapter changes every target
    # un-permuting the GGUF's q rows gives Hugging Face's layout back
    from safetensors.numpy import load_file

    hf = load_file(str(merged_dir / "model.safetensors"))
    np.testing.assert_array_equal(G.unpermute(merged["blk.1.attn_q.weight"], 4),
                                  hf["model.layers.1.self_attn.q_proj.weight"])


@pytest.mark.parametrize("extra, why", [
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"target_modules": ["q_proj", "embed_tokens"]}, "embed_tokens or lm_head"),
], ids=["modules_to_save", "embedding-lora"])
def test_an_adapter_gguf_cannot_carry_is_refused_in_one_line(tiny_base, tmp_path, extra, why):
    cfg_dir = tmp_path / "a"
    cfg_dir.mkdir()
    (cfg_dir / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                                             "target_modules": ["q_proj"], **extra}))
    with pytest.raises(G.GgufExportError, match=why) as e:
        G.write_adapter(cfg_dir, json.loads((tiny_base / "config.json").read_text()), tmp_path / "a.gguf")
    assert "\n" not in str(e.value) and not (tmp_path / "a.gguf").exists()


SMOLLM2_MODELFILE = '''FROM ./model.gguf
TEMPLATE """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{- range .Messages }}{{ if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}{{ end }}<|im_start|>assistant
"""
SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""
PARAMETER stop "<|im_end|>"
PARAMETER temperature 0
'''


def smollm2_template() -> str:
    from gguf import GGUFReader

    from ft_pipeline.model.gguf_models import packaged_gguf

    return GGUFReader(str(packaged_gguf("smollm2-135m-instruct"))).fields["tokenizer.chat_template"].contents()


@pytest.mark.parametrize("which", ["smollm2", "builtin"])
def test_the_modelfile_template_renders_what_the_jinja_template_renders(which):
    from ft_pipeline.export import modelfile as M
    from ft_pipeline.model.base_models import CHAT_TEMPLATE

    template = smollm2_template() if which == "smollm2" else CHAT_TEMPLATE
    text = M.modelfile(template, "./model.gguf")
    if which == "smollm2":
        assert text == SMOLLM2_MODELFILE
    else:
        assert "SYSTEM" not in text and 'PARAMETER stop "<|end|>"' in text
    go = text.split('TEMPLATE """')[1].split('"""')[0]
    system = text.split('SYSTEM """')[1].split('"""')[0] if "SYSTEM" in text else None
    for conv in conversations(12):
        assert M.render(go, conv, system) == M.jinja_render(template, conv), conv


def test_an_adapter_modelfile_names_the_base_and_the_adapter_and_an_unknown_template_is_refused():
    from ft_pipeline.export import modelfile as M

    text = M.modelfile(smollm2_template(), "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "./adapter.gguf")
    assert text.startswith("FROM /models/SmolLM2-135M-Instruct.Q4_1.gguf\nADAPTER ./adapter.gguf\nTEMPLATE")
    llama3 = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}"
              "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>"
              "\n\n{% endif %}")
    with pytest.raises(M.ModelfileError, match="neither ChatML nor the builtin format"):
        M.modelfile(llama3, "./model.gguf")


def test_the_cli_refuses_an_out_folder_that_holds_files_in_one_line_with_exit_2(tmp_path):
    import subprocess
    import sys

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    env = {**__import__("os").environ, "MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri()}
    r = subprocess.run([sys.executable, "-m", "ft_pipeline.cli", "export", "--format", "gguf", "--version", "1",
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"export: {tmp_path / 'out'} already holds files; choose an empty folder or add --force to replace them"]
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_the_gguf_asset_records_a_model_gguf_cannot_hold_as_skipped(tmp_path, monkeypatch):
    """gguf_model does not fail the run for a champion GGUF cannot hold: it materializes with the reason and
    leaves no GGUF of an earlier champion behind (the exported path runs in test_end_to_end)."""
    import dagster as dg

    from ft_pipeline.defs import registry
    from ft_pipeline.export import gguf_bundle
    from ft_pipeline.resources import MlflowTracking, PipelineHome

    def refuse(*args, **kwargs):
        raise G.GgufExportError("GGUF export supports LlamaForCausalLM; this model is GPTNeoXForCausalLM")

    monkeypatch.setattr(gguf_bundle, "export_gguf", refuse)
    home = PipelineHome(home=str(tmp_path / "home"), raw_dir=str(tmp_path / "raw"))
    (home.gguf_dir).mkdir(parents=True)
    (home.gguf_dir / "model.gguf").write_bytes(b"an earlier champion's")
    res = dg.materialize([registry.gguf_model], resources={"home": home, "mlflow_tracking": MlflowTracking(
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "artifacts"))})
    assert res.success and not home.gguf_dir.exists()
    md = res.asset_materializations_for_node("gguf_model")[0].metadata
    assert md["exported"].value is False and "GPTNeoXForCausalLM" in md["reason"].value
