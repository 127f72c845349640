"""Loss on assistant tokens only: the chat template SFTTrainer trains with (one that marks the assistant turns with
{% generation %}), the examples tokenized with their assistant mask, how many tokens carry loss, and the check
that refuses to train when no token or every token would (what a template without, or with a misplaced,
{% generation %} span does). model/training.py runs them before it builds a trainer."""

from __future__ import annotations

from dataclasses import dataclass


class SupervisionError(ValueError):
    """The training examples would train on no token, or on every token (a broken chat template)."""


@dataclass
class Supervision:
    """How many tokens of the training examples carry loss."""

    examples: int
    tokens: int
    supervised: int
    examples_without_supervision: int

    @property
    def fraction(self) -> float:
        return self.supervised / self.tokens if self.tokens else 0.0


def training_template(tok) -> str | None:
    """The chat template TRL trains with: the tokenizer's own when it marks assistant turns with
    {% generation %}, else the training form of a template shape we know (ChatML as SmolLM2 writes it: see
    model/chat_templates.py), else TRL's patched training template for known model families (as SFTTrainer does)."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    from ft_pipeline.model.chat_templates import training_form

    if tok.chat_template is None:
        raise SupervisionError("the tokenizer has no chat template: set one with a {% generation %} span around "
                               "the assistant turns (or use TRL's chat_template_path)")
    if has_generation_markers(tok.chat_template):
        return None
    if (ours := training_form(tok.chat_template)) is not None:
        return ours
    try:
        return get_training_chat_template(tok)
    except ValueError as e:
        raise SupervisionError("the chat template marks no assistant tokens ({% generation %} is missing) and TRL "
                               "has no training template for this model family, so no token would carry loss; add "
                               "{% generation %}...{% endgeneration %} around the assistant turns") from e


def tokenize(tok, records: list[dict], max_length: int) -> tuple[list[dict], Supervision]:
    """The examples as SFTTrainer trains on them (input_ids + assistant_masks from the chat template, like TRL's own
    preprocessing), truncated to max_length, with how many tokens carry loss."""
    template = training_template(tok)
    rows, supervised, tokens, dead = [], 0, 0, 0
    for r in records:
        messages = [{k: m[k] for k in ("role", "content", "weight") if k in m} for m in r["messages"]]
        out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                      chat_template=template)
        ids, mask = list(out["input_ids"])[:max_length], list(out["assistant_masks"])[:max_length]
        n = sum(mask)
        supervised, tokens, dead = supervised + n, tokens + len(ids), dead + (n == 0)
        rows.append({"input_ids": ids, "assistant_masks": mask})
    return rows, Supervision(len(rows), tokens, supervised, dead)


def check_supervision(sup: Supervision) -> None:
    """Refuse to train on nothing, or on everything: both mean the chat template's assistant span is broken."""
    if sup.tokens == 0:
        raise SupervisionError("no training examples to train on")
    if sup.supervised == 0:
        raise SupervisionError(f"no token of the {sup.examples} training examples is supervised: the chat template's "
                               "{% generation %} span marks no assistant tokens (is it around the assistant content?)")
    if sup.supervised == sup.tokens:
        raise SupervisionError(f"every token of the {sup.examples} training examples is supervised, prompts and role "
                               "markers included: the chat template's {% generation %} span covers the whole "
                               "conversation instead of the assistant turns only")
