"""Training forms of chat templates that have no `{% generation %}` span.

TRL's assistant-only loss needs the assistant tokens marked with `{% generation %}...{% endgeneration %}`.
TRL 1.16 patches a few model families itself (`get_training_chat_template`) but not ChatML as SmolLM2 writes
it, so this module derives the training form from the model's own template: the one expression that renders
every message is split so that an assistant turn's content and its `<|im_end|>` are inside the span, and
everything else is left exactly as it was. The model is therefore trained on the very tokens the model's own
template renders at inference (tested on the real tokenizer): the same system-prompt default, the same
separators, the same end-of-turn token, which is what it must produce for generation to stop.

The newline after `<|im_end|>` is not supervised: generation stops at `<|im_end|>`, so it is never produced.
An assistant message with `weight: 0` is shown to the model but carries no loss, as in the builtin template."""

from __future__ import annotations

# SmolLM2 (and SmolLM) render each message with this one expression.
CHATML_MESSAGE = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
CHATML_TRAINING_MESSAGE = (
    "{% if message['role'] == 'assistant' and message.get('weight', 1) != 0 %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}" + CHATML_MESSAGE + "{% endif %}"
)


def training_form(template: str) -> str | None:
    """The training form of `template` (same rendering, assistant turns in a generation span), or None when this
    module does not know the template's shape."""
    if template.count(CHATML_MESSAGE) == 1 and "{% generation %}" not in template:
        return template.replace(CHATML_MESSAGE, CHATML_TRAINING_MESSAGE)
    return None


def strip_generation_markers(template: str) -> str:
    return template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
