"""OpenAI's Responses API over the scoring contract: what a `POST /v1/responses` body may hold, and the Response
objects and streamed events sent back.

What clients that speak the Responses API (the openai SDK's `client.responses`, Agent Framework's
OpenAIChatClient) send:
    {"model": "...", "input": "a question" or [{"role": "user", "content": "..." or [{"type": "input_text",
     "text": "..."}]}, ...], "instructions": "...", "max_output_tokens": 64, "temperature": 0, "top_p": 1,
     "stream": false, "store": false}
The answer is a Response object with one assistant message, or with `stream: true` the server-sent events
response.created, response.in_progress, response.output_item.added, response.content_part.added,
response.output_text.delta..., response.output_text.done, response.content_part.done, response.output_item.done
and response.completed (response.incomplete when max_output_tokens cut the answer), each with its
sequence_number. `instructions` becomes a system message ahead of the input; developer messages are system ones.

The settings map onto the chat-completions route's (serving/openai_api.py), so both share the new-token limit
(max_output_tokens), the greedy defaults and the same answer to the same conversation. Nothing is stored:
`store` is accepted either way and the Response says "store": false; previous_response_id and conversation
(which need stored responses) are refused, as are tools, reasoning, a structured text.format, logprobs and
background mode: settings that would change the answer. Settings for what this endpoint does not have
(parallel_tool_calls, include of reasoning items, user, service_tier, ...) are ignored, as for chat completions.

The body is a pydantic model (ResponsesRequest); the replies are plain dicts of OpenAI's shapes, which the tests
check against the openai package's own types (openai.types.responses).

For a caller whose upstream answers in one piece (the chat page over /score): parse_responses_request gives the
messages and params; then response_json(rid, opts, done) or Events(rid, opts).whole(done) with
done = {"text": answer, "finish_reason": "stop"} (token counts optional).
"""

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from serving.contract import SAID, BadRequest, decode, explain, text_only, where
from serving.openai_api import chat_message, check_model, generation_params

INPUT_TEXT = '{"type": "input_text", "text": "..."}'
INPUT = 'input must be a string or a non-empty list of {"role": "user|assistant|system|developer", "content": "..."}'
TOKENS = "max_output_tokens"


class TextPart(BaseModel):
    """A text part of a message: input_text (what a caller says), output_text (an earlier answer, as sent back)."""

    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["input_text", "output_text"]
    text: Annotated[str, AfterValidator(text_only)]


def _content_kind(content: Any) -> str | None:
    return "text" if isinstance(content, str) else "parts" if isinstance(content, list) else None


class InputMessage(BaseModel):
    """A message item of `input`; its id and status, when an earlier output is sent back, are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Annotated[
        Annotated[Annotated[str, AfterValidator(text_only)], Tag("text")] | Annotated[list[TextPart], Tag("parts")],
        Discriminator(_content_kind),
    ]

    def as_dict(self) -> dict:
        return chat_message(self.role, self.content)


def _input_kind(value: Any) -> str | None:
    return "prompt" if isinstance(value, str) else "chat" if isinstance(value, list) else None


class ResponsesRequest(BaseModel):
    """What this endpoint reads of a Responses body; the settings refuse_unsupported does not refuse are ignored."""

    model_config = ConfigDict(strict=True, extra="allow")
    input: Annotated[
        Annotated[Annotated[str, AfterValidator(text_only)], Tag("prompt")]
        | Annotated[Annotated[list[InputMessage], Field(min_length=1)], Tag("chat")],
        Discriminator(_input_kind),
    ]
    instructions: Annotated[str, AfterValidator(text_only)] | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    stream: bool | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None

    def messages(self) -> list[dict]:
        """The conversation as the scorer takes it: the instructions first, as a system message."""
        if isinstance(self.input, str):
            said = [{"role": "user", "content": self.input}]
        else:
            said = [m.as_dict() for m in self.input]
        return ([{"role": "system", "content": self.instructions}] if self.instructions else []) + said


RESPONSES_SAID = {
    **SAID,
    ("literal_error", "role"): "{where} is {value!r}; expected user, assistant, system or developer",
    ("string_type", "instructions"): "instructions must be a string, got {type}",
    ("less_than_equal", "temperature"): "{where} must be between 0 and 2, got {value!r}",
    ("greater_than_equal", TOKENS): "{where} must be at least 1",
}
METADATA = 'metadata must be an object of strings, e.g. {"topic": "planets"}'


def _explain(error: dict) -> str:
    loc, kind = error["loc"], error["type"]
    if "parts" in loc:  # anything wrong inside a list of content parts: only text parts are read
        part = loc[: loc.index("parts") + 2]
        return f"{where(part)} must be an input_text part ({INPUT_TEXT}); this model reads text only"
    if kind in ("union_tag_not_found", "union_tag_invalid") and loc[-1] == "content":
        return f"{where(loc)} must be a string or a list of input_text parts"
    if loc[0] == "input" and (
        (len(loc) == 1 and kind in ("union_tag_not_found", "union_tag_invalid"))
        or (loc[-1] == "chat" and kind in ("too_short", "list_type"))
    ):
        return INPUT
    if loc[0] == "metadata":
        return METADATA
    if loc[0] == "input" and kind == "model_type" and isinstance(loc[-1], int):
        return f"{where(loc)} must be a message item with 'role' and 'content'"
    return explain(error, RESPONSES_SAID)


# (field, values that leave it off, why): settings that would change the answer and this endpoint does not do
REFUSED = (
    ("tools", (None, []), "this endpoint calls no tools"),
    ("tool_choice", (None, "auto", "none"), "this endpoint calls no tools"),
    (
        "previous_response_id",
        (None, ""),
        "this endpoint stores no responses: send store=false and the whole conversation as input",
    ),
    (
        "conversation",
        (None, ""),
        "this endpoint stores no conversations: send store=false and the whole conversation as input",
    ),
    ("prompt", (None,), "this endpoint has no stored prompts; send instructions and input"),
    ("background", (None, False), "this endpoint answers in the request (or its stream)"),
    ("top_logprobs", (None, 0), "this endpoint returns no logprobs"),
)


def refuse_unsupported(body: dict, served_model: str):
    """BadRequest / NotFound for what this endpoint does not do, naming the field."""
    check_model(body, served_model)
    for name, off, why in REFUSED:
        if body.get(name) not in off:
            raise BadRequest(f"{name} is not supported by this endpoint ({why}); leave it out")
    reasoning = body.get("reasoning")
    if reasoning is not None and (not isinstance(reasoning, dict) or any(v is not None for v in reasoning.values())):
        raise BadRequest("reasoning is not supported by this endpoint (the model does not reason); leave it out")
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else text
    if fmt not in (None, {"type": "text"}):
        raise BadRequest(f"text.format {fmt!r} is not supported; this endpoint answers in plain text")
    include = body.get("include")
    if isinstance(include, list) and "message.output_text.logprobs" in include:
        raise BadRequest("include 'message.output_text.logprobs' is not supported: this endpoint returns no logprobs")
    for i, item in enumerate(body.get("input") if isinstance(body.get("input"), list) else []):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind not in (None, "message"):
            raise BadRequest(
                f"input[{i}] is a {kind!r} item; this endpoint reads message items only (role and text content)"
            )


def parse_responses(body, limit: int, served_model: str) -> tuple[list[dict], dict, dict]:
    """A decoded Responses body -> (messages, generation params, options), or BadRequest / NotFound.

    options: stream (bool), stop ([]: the Responses API has none), model (the served model's id), and what the
    Response echoes: instructions, metadata, params (the settings used: max_output_tokens, temperature, top_p).
    """
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object with "input"')
    if "input" not in body:
        raise BadRequest('the body has no "input": send a string or [{"role": "user", "content": "..."}]')
    refuse_unsupported(body, served_model)
    try:
        request = ResponsesRequest.model_validate(body)
    except ValidationError as exc:
        raise BadRequest(_explain(exc.errors(include_url=False)[0])) from None
    params = generation_params(limit, TOKENS, request.max_output_tokens, request.temperature, request.top_p)
    options = {
        "stream": bool(request.stream),
        "stop": [],
        "model": served_model,
        "instructions": request.instructions,
        "metadata": request.metadata or {},
        "params": params,
    }
    return request.messages(), params, options


def parse_responses_request(raw, limit: int, served_model: str):
    """A raw body (bytes or str) -> parse_responses's result, or BadRequest / NotFound."""
    return parse_responses(decode(raw), limit, served_model)


# ---- what is sent back ---------------------------------------------------------------------------------------


def new_id(prefix: str = "resp") -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt_tokens + completion_tokens,
    }


def text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str | None, status: str) -> dict:
    """The answer as an output message item; text None: one not begun (no content part yet)."""
    content = [] if text is None else [text_part(text)]
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


def response_object(rid: str, opts: dict, created_at: int, status: str, output: list, **fields) -> dict:
    """A Response object; fields: incomplete_details, usage, error (each null unless given)."""
    params = opts["params"]
    return {
        "id": rid,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": fields.get("error"),
        "incomplete_details": fields.get("incomplete_details"),
        "instructions": opts["instructions"],
        "max_output_tokens": params["max_new_tokens"],
        "model": opts["model"],
        "output": output,
        "parallel_tool_calls": False,
        "previous_response_id": None,
        "reasoning": None,
        "store": False,
        "temperature": params["temperature"] if params["do_sample"] else 0.0,
        "top_p": params["top_p"],
        "text": {"format": {"type": "text"}},
        "tool_choice": "none",
        "tools": [],
        "truncation": "disabled",
        "metadata": opts["metadata"],
        "usage": fields.get("usage"),
    }


def _finished(done: dict) -> tuple[str, dict | None, dict | None]:
    """(status, incomplete_details, usage) of a generation result (serving.scoring.Scorer.complete's dict, or
    {"text", "finish_reason"} from an upstream that counts no tokens)."""
    cut = done.get("finish_reason") == "length"
    counted = done.get("prompt_tokens") is not None and done.get("completion_tokens") is not None
    return (
        "incomplete" if cut else "completed",
        {"reason": TOKENS} if cut else None,
        usage(done["prompt_tokens"], done["completion_tokens"]) if counted else None,
    )


def response_json(rid: str, opts: dict, done: dict, created_at: int | None = None) -> dict:
    """The Response object of one finished answer (non-streamed)."""
    status, incomplete, used = _finished(done)
    item = message_item(new_id("msg"), done["text"], status)
    return response_object(
        rid, opts, created_at or int(time.time()), status, [item], incomplete_details=incomplete, usage=used
    )


class Events:
    """The server-sent events of one streamed Response, numbered in order: opening(), delta(piece) for each piece
    of text, then closing(done), or failed(message) when generation fails midway."""

    def __init__(self, rid: str, opts: dict, created_at: int | None = None):
        self.rid, self.opts, self.created_at = rid, opts, created_at or int(time.time())
        self.item_id, self.seq, self.text = new_id("msg"), 0, ""

    def event(self, kind: str, **fields) -> bytes:
        """One event: `event: <type>` and `data: <json>` (with its type and sequence_number), then a blank line."""
        data = json.dumps({"type": kind, "sequence_number": self.seq, **fields}, ensure_ascii=False)
        self.seq += 1
        return f"event: {kind}\ndata: {data}\n\n".encode()

    def _response(self, status: str, output: list, **fields) -> dict:
        return response_object(self.rid, self.opts, self.created_at, status, output, **fields)

    def _where(self) -> dict:
        return {"item_id": self.item_id, "output_index": 0, "content_index": 0}

    def opening(self) -> list[bytes]:
        return [
            self.event("response.created", response=self._response("in_progress", [])),
            self.event("response.in_progress", response=self._response("in_progress", [])),
            self.event(
                "response.output_item.added", output_index=0, item=message_item(self.item_id, None, "in_progress")
            ),
            self.event("response.content_part.added", **self._where(), part=text_part("")),
        ]

    def delta(self, piece: str) -> bytes:
        self.text += piece
        return self.event("response.output_text.delta", **self._where(), delta=piece, logprobs=[])

    def closing(self, done: dict) -> list[bytes]:
        """The events after the last piece; done: the generation result, its text the pieces handed to delta."""
        status, incomplete, used = _finished(done)
        item = message_item(self.item_id, self.text, status)
        final = self._response(status, [item], incomplete_details=incomplete, usage=used)
        return [
            self.event("response.output_text.done", **self._where(), text=self.text, logprobs=[]),
            self.event("response.content_part.done", **self._where(), part=text_part(self.text)),
            self.event("response.output_item.done", output_index=0, item=item),
            self.event(f"response.{status}", response=final),
        ]

    def failed(self, message: str) -> list[bytes]:
        """response.failed: the answer so far, and why it stopped (a timeout, a model failure)."""
        item = message_item(self.item_id, self.text, "incomplete")
        error = {"code": "server_error", "message": message}
        return [self.event("response.failed", response=self._response("failed", [item], error=error))]

    def whole(self, done: dict) -> list[bytes]:
        """Every event of an answer that came in one piece (an upstream that does not stream)."""
        return [*self.opening(), *([self.delta(done["text"])] if done["text"] else []), *self.closing(done)]
