"""The training form of SmolLM2's chat template renders the very tokens of the model's own template (on the
real tokenizer), and marks exactly the assistant answers and their end-of-turn token for loss."""

import pytest

from ft_pipeline.model import chat_templates
from ft_pipeline.model.supervision import tokenize, training_template

SYS = {"role": "system", "content": "You extract JSON."}
U1, A1 = {"role": "user", "content": "My order ORD-123456 is late"}, {"role": "assistant", "content": '{"a": 1}'}
U2, A2 = {"role": "user", "content": "and also\nthis, in two lines"}, {"role": "assistant", "content": "Sure."}

CONVERSATIONS = [
    [U1, A1],                   # the usual single turn, with the template's default system prompt
    [SYS, U1, A1],              # an explicit system prompt replaces the default
    [U1, A1, U2, A2],           # multi-turn: both answers carry loss
    [SYS, U1, A1, U2, A2],
    [U1, {**A1, "weight": 0}, U2, A2],  # a weight-0 answer is context, not supervised
]


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from ft_pipeline.model.gguf_models import packaged_gguf

    path = packaged_gguf("smollm2-135m-instruct")
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def test_trl_has_no_training_template_for_smollm2_but_we_do(tok):
    from trl.chat_template_utils import get_training_chat_template

    with pytest.raises(ValueError):
        get_training_chat_template(tok)
    assert chat_templates.training_form(tok.chat_template) == training_template(tok)


@pytest.mark.parametrize("conv", CONVERSATIONS, ids=range(len(CONVERSATIONS)))
def test_training_tokens_are_the_inference_tokens(tok, conv):
    rows, _ = tokenize(tok, [{"messages": conv}], max_length=4096)
    ids, mask = rows[0]["input_ids"], rows[0]["assistant_masks"]
    clean = [{k: m[k] for k in ("role", "content")} for m in conv]
    assert ids == tok(tok.apply_chat_template(clean, tokenize=False), add_special_tokens=False)["input_ids"]
    # Without its markers the training form renders the same text as the model's template
    stripped = chat_templates.strip_generation_markers(training_template(tok))
    assert tok.apply_chat_template(clean, tokenize=False, chat_template=stripped) == \
        tok.apply_chat_template(clean, tokenize=False)
    # what is supervised: each weighted answer and its <|im_end|>, nothing else
    supervised = tok.decode([i for i, m in zip(ids, mask) if m])
    expected = "".join(m["content"] + "<|im_end|>" for m in conv if m["role"] == "assistant" and m.get("weight", 1))
    assert supervised == expected
    # the prompt the model is asked at evaluation is exactly the prefix it was trained on
    prompt = tok(tok.apply_chat_template(clean[:-1], tokenize=False, add_generation_prompt=True),
                 add_special_tokens=False)["input_ids"]
    assert ids[:len(prompt)] == prompt and mask[len(prompt) - 1] == 0 and mask[len(prompt)] == 1


def test_an_unknown_template_shape_is_left_to_trl():
    assert chat_templates.training_form("{{ messages[0]['content'] }}") is None
