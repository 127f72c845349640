"""Ollama Modelfiles for an exported GGUF: `FROM` the model (or the base, plus `ADAPTER` the LoRA GGUF), a
`TEMPLATE` in Ollama's Go template syntax that renders what the model's Jinja chat template renders, the
template's default system prompt as `SYSTEM` (Ollama never runs the Jinja template, so a default written in it
would be lost), and `PARAMETER stop` for the end-of-turn token.

The Go template is not translated from the Jinja source: the chat format is recognised by rendering the Jinja
template on probe conversations and comparing with each known format (ChatML; builtin:tiny's `<|role|>`), and
the chosen one is checked again, through `render` (the few Go template actions it uses), on conversations with
and without a system prompt and over several turns. A template matching none is refused in one line."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ChatFormat:
    name: str
    open: str  # "{role}" is replaced by the role
    close: str  # after each message's content
    stop: str  # the end-of-turn token

    def turn(self, role: str, content: str) -> str:
        return self.open.replace("{role}", role) + content + self.close

    def render(self, system: str | None, messages: list[dict]) -> str:
        text = self.turn("system", system) if system else ""
        text += "".join(self.turn(m["role"], m["content"]) for m in messages if m["role"] != "system")
        return text + self.open.replace("{role}", "assistant")

    def go_template(self) -> str:
        def go(s: str) -> str:
            return s.replace("{role}", "{{ .Role }}")

        sys_open = self.open.replace("{role}", "system")
        return ("{{- if .System }}" + sys_open + "{{ .System }}" + self.close + "{{ end }}"
                "{{- range .Messages }}{{ if ne .Role \"system\" }}" + go(self.open) + "{{ .Content }}"
                + self.close + "{{ end }}{{ end }}" + self.open.replace("{role}", "assistant"))


FORMATS = (ChatFormat("chatml", "<|im_start|>{role}\n", "<|im_end|>\n", "<|im_end|>"),
           ChatFormat("builtin", "<|{role}|>", "<|end|>", "<|end|>"))
_U1, _U2 = {"role": "user", "content": "U1"}, {"role": "user", "content": "U2"}
_S1, _A1 = {"role": "system", "content": "S1"}, {"role": "assistant", "content": "A1"}
PROBES = ([_U1], [_S1, _U1], [_U1, _A1, _U2], [_S1, _U1, _A1, _U2])


class ModelfileError(ValueError):
    """The chat template has no Ollama equivalent here; one line."""


def jinja_render(template: str, messages: list[dict], **special) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[messages], chat_template=template,
                                        add_generation_prompt=True, **special)
    return rendered[0]


def chat_format(template: str, **special) -> tuple[ChatFormat, str | None]:
    """The known format `template` renders, and the system prompt it injects when a conversation has none."""
    for fmt in FORMATS:
        first = jinja_render(template, PROBES[0], **special)
        sys_open = fmt.open.replace("{role}", "system")
        default = None
        if first.startswith(sys_open) and fmt.close in first:
            default = first[len(sys_open):first.index(fmt.close)]
        if all(jinja_render(template, p, **special) == render(fmt.go_template(), p, default) for p in PROBES):
            return fmt, default
    raise ModelfileError("the model's chat template is neither ChatML nor the builtin format: no Ollama TEMPLATE is "
                         "written (llama.cpp reads the Jinja template stored in the GGUF: llama-server --jinja)")


def _quote(s: str) -> str:
    return '"""' + s + '"""'


def modelfile(template: str, from_: str, adapter: str | None = None, **special) -> str:
    """The Modelfile text for a GGUF (`from_`) or a base GGUF plus a LoRA adapter GGUF."""
    fmt, default = chat_format(template, **special)
    lines = [f"FROM {from_}"] + ([f"ADAPTER {adapter}"] if adapter else [])
    lines.append(f"TEMPLATE {_quote(fmt.go_template())}")
    if default:
        lines.append(f"SYSTEM {_quote(default)}")
    lines += [f'PARAMETER stop "{fmt.stop}"', "PARAMETER temperature 0"]
    return "\n".join(lines) + "\n"


_ACTION = re.compile(r"(\s*)\{\{(-?)\s*(.*?)\s*(-?)\}\}(\s*)", re.S)


def render(go_template: str, messages: list[dict], system: str | None = None) -> str:
    """The Go template rendered as Ollama renders it for a chat: `.System` is the conversation's system message,
    else the Modelfile's SYSTEM (`system`); `.Messages` holds them all, the system one included. Only the
    actions `go_template` writes are known: if .System, range .Messages, if ne .Role "x", .System/.Role/.Content."""
    own = [m["content"] for m in messages if m["role"] == "system"]
    msgs = messages if own or not system else [{"role": "system", "content": system}] + messages
    sysv = own[-1] if own else (system or "")
    parts, pos = [], 0  # (text) or (action,)
    for m in _ACTION.finditer(go_template):
        lead, trim_l, action, trim_r, trail = m.groups()
        parts.append(go_template[pos:m.start()] + ("" if trim_l else lead))
        parts.append((action,))
        parts.append("" if trim_r else trail)
        pos = m.end()
    parts.append(go_template[pos:])

    def run(i: int, dot: dict, out: list[str], skip: bool) -> int:
        while i < len(parts):
            p = parts[i]
            if isinstance(p, str):
                if not skip:
                    out.append(p)
                i += 1
                continue
            a = p[0]
            if a == "end":
                return i + 1
            if a.startswith("if "):
                cond = a[3:]
                if cond == ".System":
                    ok = bool(sysv)
                else:
                    role = re.fullmatch(r'ne \.Role "(\w+)"', cond).group(1)
                    ok = dot["role"] != role
                i = run(i + 1, dot, out, skip or not ok)
            elif a == "range .Messages":
                end = i + 1
                for msg in msgs:
                    end = run(i + 1, msg, out, skip)
                i = end if msgs else run(i + 1, dot, [], True)
            else:
                if not skip:
                    out.append({".System": sysv, ".Role": dot.get("role"), ".Content": dot.get("content")}[a])
                i += 1
        return i

    out: list[str] = []
    run(0, {}, out, False)
    return "".join(out)
