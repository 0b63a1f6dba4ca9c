"""OpenAI's chat-completions contract over the scoring contract: what a request may hold, and the shapes sent back.

`POST /v1/chat/completions` takes what chat clients (the openai SDK, Open WebUI, Gradio, Agent Framework) send:
    {"model": "...", "messages": [{"role": "user", "content": "..."}], "max_tokens": 64, "temperature": 0,
     "top_p": 1, "stop": ["\\n\\n"], "n": 1, "stream": false, "stream_options": {"include_usage": true}}
and answers with a chat.completion object, or with `stream: true` server-sent events of chat.completion.chunk
objects ending in `data: [DONE]`. The generation settings map onto the scoring contract's (serving/contract.py),
so both routes share one limit, one set of defaults and one check: left out, a setting is the endpoint's default
(greedy, max_new_tokens 64), not OpenAI's (temperature 1).

Settings that would change the answer and are not implemented (n > 1, tools, a JSON response format, logprobs)
are refused with 400; those that only tune a sampler we do not have (presence_penalty, seed, user, ...) are
ignored, as OpenAI-compatible servers do.
The body is a pydantic model (ChatRequest); responses are plain dicts of OpenAI's shapes, which the tests check
against the openai package's own types (ChatCompletion, ChatCompletionChunk, Model).
"""

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from common.chats import is_text
from serving.contract import SAID, BadRequest, Params, decode, explain, text_only, where

MAX_STOP = 4  # OpenAI's own limit on stop sequences
TEXT_PART = '{"type": "text", "text": "..."}'
MESSAGES = 'messages must be a non-empty list of {"role": "system|user|assistant", "content": "..."}'


class NotFound(BadRequest):
    """A model this endpoint does not serve (HTTP 404)."""

    status = 404


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["text"]
    text: Annotated[str, AfterValidator(text_only)]


def _content_kind(content: Any) -> str | None:
    return "text" if isinstance(content, str) else "parts" if isinstance(content, list) else None


class ChatMessage(BaseModel):
    """A message; developer is newer clients' name for system. Content: a string or a list of text parts."""

    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]
    content: Annotated[
        Annotated[Annotated[str, AfterValidator(text_only)], Tag("text")] | Annotated[list[TextPart], Tag("parts")],
        Discriminator(_content_kind),
    ]

    def as_dict(self) -> dict:
        return chat_message(self.role, self.content)


def chat_message(role: str, content) -> dict:
    """The message the scorer takes: content's text parts joined; developer (newer clients' name) is system."""
    text = content if isinstance(content, str) else "".join(p.text for p in content)
    return {"role": "system" if role == "developer" else role, "content": text}


def _stops(stop):
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOP
        or not all(isinstance(s, str) and s and is_text(s) for s in stops)
    ):
        raise ValueError(f"must be a non-empty string or a list of at most {MAX_STOP} of them, got {stop!r}")
    return stops


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """What this endpoint reads of a chat-completions body; other settings (presence_penalty, seed, user, ...)
    tune a sampler we do not have and are ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(strict=True, extra="allow")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    stop: Annotated[Any, AfterValidator(_stops)] = Field(None, validate_default=True)
    stream: bool | None = None
    stream_options: StreamOptions | None = None

    def params(self, limit: int) -> dict:
        """The settings as /score's params (serving/contract.Params), max_tokens held to the limit."""
        tokens_name = "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"
        tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return generation_params(limit, tokens_name, tokens, self.temperature, self.top_p)


def generation_params(limit: int, tokens_name: str, tokens, temperature, top_p) -> dict:
    """An OpenAI route's settings as /score's params (serving/contract.Params): None is the endpoint's default, the
    new-token setting (called tokens_name in the refusal) is held to the limit, temperature 0 is greedy."""
    settings = {"max_new_tokens": tokens, "temperature": temperature, "top_p": top_p}
    params = Params(**{k: v for k, v in settings.items() if v is not None})
    if temperature is not None:  # below GREEDY_BELOW the answer is greedy (serving/scoring.py)
        params.do_sample = temperature > 0
    return params.checked(limit, tokens_name)


OPENAI_SAID = {
    **SAID,
    ("too_short", "messages"): MESSAGES.replace("{", "{{").replace("}", "}}"),
    ("list_type", "messages"): MESSAGES.replace("{", "{{").replace("}", "}}"),
    ("less_than_equal", "temperature"): "{where} must be between 0 and 2, got {value!r}",
    ("greater_than_equal", "max_tokens"): "{where} must be at least 1",
    ("greater_than_equal", "max_completion_tokens"): "{where} must be at least 1",
    ("model_type", "stream_options"): 'stream_options must be an object, e.g. {{"include_usage": true}}',
}


def _explain(error: dict) -> str:
    loc = error["loc"]
    if "parts" in loc:  # anything wrong inside a list of content parts: only text parts are read
        part = loc[: loc.index("parts") + 2]
        return f"{where(part)} must be a text part ({TEXT_PART}); this model reads text parts only"
    if error["type"] in ("union_tag_not_found", "union_tag_invalid") and loc[-1] == "content":
        return f"{where(loc)} must be a string or a list of text parts"
    return explain(error, OPENAI_SAID)


def check_model(body: dict, served_model: str):
    """NotFound when the body names a model other than the served one (left out or empty: the served one)."""
    model = body.get("model")
    if model not in (None, "", served_model):
        raise NotFound(f"model {model!r} is not served here; this endpoint serves {served_model!r} (GET /v1/models)")


def refuse_unsupported(body: dict, served_model: str):
    """BadRequest / NotFound for what this endpoint does not do: another model, several choices, tools, logprobs,
    a structured response format."""
    check_model(body, served_model)
    if body.get("n") not in (None, 1):
        raise BadRequest(f"n={body['n']!r}: this endpoint returns one choice per request; send n=1 or leave it out")
    for name, off in (
        ("tools", (None, [])),
        ("functions", (None, [])),
        ("logprobs", (None, False)),
        ("logit_bias", (None, {})),  # refused rather than ignored: an answer must not look biased when it is not
    ):
        if body.get(name, None) not in off:
            raise BadRequest(f"{name} is not supported by this endpoint; leave it out")
    fmt = body.get("response_format")
    if fmt not in (None, {"type": "text"}):
        raise BadRequest(f"response_format {fmt!r} is not supported; this endpoint answers in plain text")


def parse_chat(body, limit: int, served_model: str) -> tuple[list[dict], dict, dict]:
    """A decoded chat-completions body -> (messages, generation params, options), or BadRequest / NotFound.

    options: stream (bool), include_usage (bool), stop (list of str), model (the served model's id).
    """
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object with "messages"')
    if "messages" not in body:
        raise BadRequest('the body has no "messages": send [{"role": "user", "content": "..."}]')
    refuse_unsupported(body, served_model)
    try:
        request = ChatRequest.model_validate(body)
    except ValidationError as exc:
        raise BadRequest(_explain(exc.errors(include_url=False)[0])) from None
    options = {
        "stream": bool(request.stream),
        "include_usage": bool(request.stream_options and request.stream_options.include_usage),
        "stop": request.stop,
        "model": served_model,
    }
    return [m.as_dict() for m in request.messages], request.params(limit), options


def parse_chat_request(raw, limit: int, served_model: str):
    """A raw body (bytes or str) -> parse_chat's result, or BadRequest."""
    return parse_chat(decode(raw), limit, served_model)


def error(message: str, status: int) -> dict:
    """OpenAI's error object; the SDK turns 400/401/404 into BadRequestError/AuthenticationError/NotFoundError."""
    kind = {401: "authentication_error", 404: "not_found_error", 504: "timeout"}.get(status, "invalid_request_error")
    code = {401: "invalid_api_key", 404: "model_not_found"}.get(status)
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def completion(cid: str, model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": None}
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk(cid: str, model: str, delta: dict, finish: str | None = None, with_choice: bool = True) -> dict:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}] if with_choice else [],
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy holds events back


def sse(obj) -> bytes:
    """One server-sent event: `data: <json>` and a blank line; the string [DONE] ends a stream."""
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n".encode()


def models(model: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "phi3-runner"}]}
