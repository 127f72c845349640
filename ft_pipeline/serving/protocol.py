"""The OpenAI Chat Completions request as pydantic models, and every client mistake as an OpenAI-style error
(`{"error": {"message", "type", "param", "code"}}`) with its HTTP status."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from ft_pipeline.structured.formats import TEXT, FormatError, ResponseFormat, mentions_json, parse_response_format
from ft_pipeline.traffic.capture import MetadataError, check_metadata, verdict_from_metadata


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    # strict: "5" is not a number and 1 is not true; fields OpenAI defines that are not read here are ignored
    # unless `unsupported` refuses them.
    model_config = ConfigDict(extra="ignore", strict=True)


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, v: Any) -> Any:
        """OpenAI also takes content as a list of parts; text parts are joined, any other part is refused."""
        if isinstance(v, list):
            if v and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in v):
                return "".join(p["text"] for p in v)
            raise ValueError("must be a string or a non-empty list of text parts ({'type': 'text', 'text': ...}); "
                             "this model reads text only")
        return v


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatRequest(_Strict):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)  # OpenAI's default when absent: 1 (sampling)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: list[str] | None = Field(None, max_length=4)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logprobs: bool | None = None
    tools: list | None = None
    response_format: Any = None  # read by structured.formats (its own messages)
    store: bool | None = None  # keep the completion (traffic.store) for review, unless the server says --store none
    metadata: Any = None  # up to 16 string pairs, checked by traffic.capture (OpenAI's limits and messages)
    _format: ResponseFormat = PrivateAttr(default=TEXT)  # response_format, read and checked by parse_request
    _metadata: dict = PrivateAttr(default_factory=dict)  # metadata, checked by parse_request

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, v: Any) -> Any:
        v = [v] if isinstance(v, str) else v
        if isinstance(v, list) and any(not isinstance(s, str) or not s for s in v):
            raise ValueError("every stop sequence must be a non-empty string")
        return v

    def budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def format(self) -> ResponseFormat:
        return self._format

    @property
    def meta(self) -> dict[str, str]:
        return self._metadata


def _param(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def from_validation(e: ValidationError) -> ApiError:
    """The first problem pydantic found, said the way OpenAI says it, with the parameter it concerns."""
    err = e.errors(include_url=False)[0]
    param = _param(err["loc"])
    if err["type"] == "missing":
        return ApiError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    msg = err["msg"].removeprefix("Value error, ")
    kind = "invalid_type" if err["type"].endswith("_type") else "invalid_value"
    return ApiError(400, f"Invalid '{param}': {msg} (got {_short(err.get('input'))}).", param=param, code=kind)


def unsupported(req: ChatRequest) -> ApiError | None:
    """Parameters OpenAI defines that this server cannot honour: refused rather than silently ignored."""
    checks = [("n", req.n != 1, "only n=1 is supported"),
              ("presence_penalty", bool(req.presence_penalty), "is not supported (send 0 or leave it out)"),
              ("frequency_penalty", bool(req.frequency_penalty), "is not supported (send 0 or leave it out)"),
              ("logprobs", bool(req.logprobs), "is not supported"),
              ("tools", bool(req.tools), "tool calling is not supported by this model")]
    for param, bad, why in checks:
        if bad:
            return ApiError(400, f"Invalid '{param}': {why}.", param=param, code="unsupported_parameter")
    return None


def parse_request(raw: bytes) -> ChatRequest:
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"We could not parse the JSON body of your request: {e}. The body must be one JSON "
                            "object (Content-Type: application/json).", code="invalid_json") from None
    if not isinstance(obj, dict):
        raise ApiError(400, f"The request body must be a JSON object, not {type(obj).__name__}.", code="invalid_json")
    try:
        req = ChatRequest.model_validate(obj)
    except ValidationError as e:
        raise from_validation(e) from None
    if (err := unsupported(req)) is not None:
        raise err
    req._format = read_format(req)
    req._metadata = read_metadata(req.metadata)
    return req


def read_metadata(value: Any, verdict: bool = True, creating: bool = True) -> dict[str, str]:
    """`metadata` within OpenAI's limits and, with `verdict`, a `review` in it one of the verdicts (`corrected`
    needs a correction when `creating`: an update keeps the one recorded before); else 400 naming it."""
    try:
        md = check_metadata(value)
        said = verdict_from_metadata(md) if verdict else None
    except MetadataError as e:
        raise ApiError(400, str(e), param=e.param, code="invalid_value") from None
    if creating and said == ("corrected", None):
        raise ApiError(400, "Invalid 'metadata.review': 'corrected' needs a 'correction'.", param="metadata.review",
                       code="invalid_value")
    return md


def read_format(req: ChatRequest) -> ResponseFormat:
    """The request's response_format; 400 naming the problem (param "response_format") when it is malformed or,
    with strict: true, outside OpenAI's strict subset; json_object needs the word "json" in the messages."""
    try:
        fmt = parse_response_format(req.response_format)
    except FormatError as e:
        raise format_error(e) from None
    if fmt.type == "json_object" and not mentions_json([m.content for m in req.messages]):
        raise ApiError(400, "'messages' must contain the word 'json' in some form, to use 'response_format' of "
                            "type 'json_object'.", param="messages", code="invalid_value")
    return fmt


def format_error(e: FormatError) -> ApiError:
    msg = str(e) if str(e).startswith("Invalid schema") else f"Invalid 'response_format': {e}"
    return ApiError(400, msg, param="response_format", code="invalid_value")


def context_error(limit: int, prompt: int, completion: int | None) -> ApiError | None:
    """400 when the prompt, or the prompt and the completion asked for, do not fit the model's context."""
    if prompt >= limit:
        return ApiError(400, f"This model's maximum context length is {limit} tokens. However, your messages "
                             f"resulted in {prompt} tokens. Please reduce the length of the messages.",
                        param="messages", code="context_length_exceeded")
    if completion is not None and prompt + completion > limit:
        return ApiError(400, f"This model's maximum context length is {limit} tokens. However, you requested "
                             f"{prompt + completion} tokens ({prompt} in the messages, {completion} in the "
                             "completion). Please reduce the length of the messages or completion.",
                        param="max_tokens", code="context_length_exceeded")
    return None
