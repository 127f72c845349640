"""The supervision check: training refuses to start when no token, or every token, of the examples would carry
loss, which is what a chat template without (or with a misplaced) {% generation %} span does."""

import pytest

from ft_pipeline.model.base_models import CHAT_TEMPLATE, build_tiny_tokenizer
from ft_pipeline.model.supervision import SupervisionError, check_supervision, tokenize
from ft_pipeline.model.training import TrainOptions, build_trainer

RECORDS = [{"messages": [{"role": "user", "content": f"refund ORD-{i}"},
                         {"role": "assistant", "content": '{"intent": "refund"}'}]} for i in range(3)]
# The tiny template with its {% generation %} span removed: no token is marked as the assistant's.
NO_SPAN = CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
# A span around the whole conversation: prompts and role markers would be trained on too.
WHOLE = "{% generation %}" + NO_SPAN + "{% endgeneration %}"
# A span in the right place that wraps nothing: the mask exists but is all zeros.
EMPTY_SPAN = CHAT_TEMPLATE.replace("{{ message['content'] }}<|end|>{% endgeneration %}",
                                   "{% endgeneration %}{{ message['content'] }}<|end|>")


def tokenizer(template=CHAT_TEMPLATE):
    tok = build_tiny_tokenizer()
    tok.chat_template = template
    return tok


def test_the_builtin_template_supervises_the_answers_only():
    rows, sup = tokenize(tokenizer(), RECORDS, max_length=1024)
    check_supervision(sup)
    answer = len('{"intent": "refund"}<|end|>'.encode()) - len("<|end|>") + 1  # bytes + one special token
    assert sup.supervised == 3 * answer and sup.tokens == sum(len(r["input_ids"]) for r in rows)
    assert 0 < sup.fraction < 1 and sup.examples_without_supervision == 0


@pytest.mark.parametrize("template, message", [
    (NO_SPAN, "{% generation %} is missing"),       # TRL knows no training template for it: nothing supervised
    (EMPTY_SPAN, "no token of the 3 training examples is supervised"),
    (WHOLE, "every token of the 3 training examples is supervised"),
])
def test_broken_templates_fail_with_a_clear_error(template, message):
    with pytest.raises(SupervisionError, match=message.replace("{", r"\{").replace("}", r"\}")):
        check_supervision(tokenize(tokenizer(template), RECORDS, max_length=1024)[1])


def test_a_weight_zero_only_example_is_counted_not_fatal():
    recs = RECORDS + [{"messages": [{"role": "user", "content": "hi"},
                                    {"role": "assistant", "content": "skip me", "weight": 0}]}]
    _, sup = tokenize(tokenizer(), recs, max_length=1024)
    check_supervision(sup)
    assert sup.examples_without_supervision == 1


def test_build_trainer_checks_before_training(tiny_base, tmp_path):
    tok_dir = tmp_path / "broken"
    import shutil

    shutil.copytree(tiny_base, tok_dir)
    tok = tokenizer(WHOLE)
    tok.save_pretrained(tok_dir)
    with pytest.raises(SupervisionError, match="covers the whole conversation"):
        build_trainer(tok_dir, RECORDS, tmp_path / "ckpt", TrainOptions(max_steps=1), report_to_mlflow=False)
