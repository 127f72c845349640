"""Structured outputs: OpenAI's `response_format` read and checked (formats.py, no engine needed), and JSON
Schemas enforced token by token with llguidance (grammar.py: one LLTokenizer per loaded tokenizer, compiled
grammars cached by schema hash, a logits processor that masks each row of a batch with its own grammar).

A low-level package: serving uses it for requests, the registry's pyfunc for `params["response_format"]`,
and evaluation can use it for constrained answers, so it sits below all of them in the layers contract."""
