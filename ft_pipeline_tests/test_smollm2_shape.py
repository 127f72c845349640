"""builtin:smollm2-shape: SmolLM2-135M's exact shape and parameter count, a tokenizer of its vocabulary size that
splits the demo data about as SmolLM2's does, and the same content hash from the same seed in another process."""

import subprocess
import sys

import pytest

from ft_pipeline.model.base_models import BUILTIN_SMOLLM2_SHAPE, resolve_base_model, spec_problem
from ft_pipeline.settings import REPO_ROOT

pytestmark = pytest.mark.slow

_HASH = """
import sys
from pathlib import Path
from ft_pipeline.model.base_models import resolve_base_model
print(resolve_base_model("builtin:smollm2-shape", Path(sys.argv[1])).content_sha256)
"""


def test_smollm2_shape_is_smollm2_135m_sized_and_deterministic(tmp_path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    assert spec_problem(BUILTIN_SMOLLM2_SHAPE) is None
    info = resolve_base_model(BUILTIN_SMOLLM2_SHAPE, tmp_path / "a")
    cfg = AutoConfig.from_pretrained(info.path)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.vocab_size, cfg.tie_word_embeddings) == (30, 576, 1536, 9, 3, 49152, True)
    with torch.device("meta"):
        assert sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters()) == 134_515_008
    tok = AutoTokenizer.from_pretrained(info.path)
    assert len(tok) == 49152 and tok.eos_token == "<|end|>" and tok.pad_token == "<|pad|>"
    answer = '{"intent": "refund", "product": "Aurora X2 headphones", "order_id": "ORD-482913", "urgency": "high"}'
    assert 20 <= len(tok(answer)["input_ids"]) <= 40  # words and JSON punctuation, not its 99 bytes
    assert tok.decode(tok(answer)["input_ids"]) == answer
    other = subprocess.run([sys.executable, "-c", _HASH, str(tmp_path / "b")], capture_output=True, text=True,
                           cwd=REPO_ROOT, check=True)
    assert other.stdout.strip() == info.content_sha256
