"""The scoring contract: what a request body may hold, checked before any model work.

The body is a pydantic model (ScoreRequest: types, ranges, unknown keys), so the rules are read off the fields;
the message a caller gets names the place and the fix in this endpoint's own words (`explain`), not pydantic's.
Shared by the scoring script (local server and Azure deployment) and the chat-completions route, whose body
maps onto the same Params. Request body (the tutorial's payload):
    {"input_data": ["a prompt", [{"role": "user", "content": "..."}, ...]],
     "params": {"max_new_tokens": 64, "temperature": 0.0, "do_sample": false, "top_p": 1.0, "return_full_text": false}}
"""

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from common.chats import ROLES, is_text
from common.generation import DEFAULTS

DEFAULT_LIMIT = 256
MAX_INPUTS = 32  # per request: bounds the time one request can hold the model
SURROGATE = "holds a lone surrogate (a \\ud800-\\udfff escape), which is not text"
MESSAGE_SHAPE = '{"role": "system|user|assistant", "content": "..."}'


class BadRequest(ValueError):
    """The request body is not something we can answer; the message says what to fix (HTTP 400)."""

    status = 400


class Refused(Exception):
    """A request answered with an error before or instead of the model: its HTTP status, and why (a body that is
    missing or too big; an upstream endpoint that gave no usable answer)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def text_only(s: str) -> str:
    """s, or ValueError when it holds a lone surrogate."""
    if not is_text(s):
        raise ValueError(SURROGATE)
    return s


def _prompt(s: str) -> str:
    if not s.strip():
        raise ValueError("is an empty prompt")
    return text_only(s)


class Message(BaseModel):
    """One chat message: the training rows' rule (common/chats.py) for roles and text. Other keys are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal[tuple(sorted(ROLES))]
    content: Annotated[str, AfterValidator(text_only)]


def _kind(item: Any) -> str | None:
    return "prompt" if isinstance(item, str) else "chat" if isinstance(item, list) else None


Item = Annotated[
    Annotated[Annotated[str, AfterValidator(_prompt)], Tag("prompt")]
    | Annotated[Annotated[list[Message], Field(min_length=1)], Tag("chat")],
    Discriminator(_kind),
]


class Params(BaseModel):
    """The generation settings; left out, a setting is the endpoint's default (common/generation.py)."""

    model_config = ConfigDict(strict=True, extra="forbid")
    max_new_tokens: int = Field(DEFAULTS["max_new_tokens"], ge=1)
    temperature: float = Field(DEFAULTS["temperature"], ge=0, allow_inf_nan=False)
    do_sample: bool = DEFAULTS["do_sample"]
    top_p: float = Field(DEFAULTS["top_p"], gt=0, le=1, allow_inf_nan=False)
    return_full_text: bool = False

    def checked(self, limit: int, name: str = "params.max_new_tokens") -> dict:
        """The settings as a dict, max_new_tokens held to the endpoint's limit (a default never over it)."""
        out = self.model_dump()
        if "max_new_tokens" not in self.model_fields_set:
            out["max_new_tokens"] = min(out["max_new_tokens"], limit)
        elif out["max_new_tokens"] > limit:
            raise BadRequest(f"{name}={out['max_new_tokens']} is over this endpoint's limit of {limit}")
        return out


PARAMS = tuple(Params.model_fields)


class ScoreRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    input_data: list[Item] = Field(min_length=1, max_length=MAX_INPUTS)
    params: Params | None = None


def where(loc: tuple) -> str:
    """pydantic's location as a caller writes it: input_data[0][1].role, params.top_p (union tags dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("prompt", "chat", "text", "parts"):
            out += f".{part}" if out else part
    return out


# (type, field) -> message; {where} is the place, {value} the input, {ctx} pydantic's constraint values
SAID = {
    ("float_type", None): "{where} must be a number, got {value!r}",
    ("int_type", None): "{where} must be a number, got {value!r}",
    ("bool_type", None): "{where} must be true or false, got {value!r}",
    ("finite_number", None): "{where} must be a finite number, got {value!r}",
    ("greater_than_equal", "max_new_tokens"): "{where} must be at least 1",
    ("greater_than_equal", "temperature"): "{where} must be 0 (greedy) or more",
    ("greater_than", "top_p"): "{where} must be in (0, 1]",
    ("less_than_equal", "top_p"): "{where} must be in (0, 1]",
    ("literal_error", "role"): "{where} is {value!r}; expected system, user or assistant",
    ("string_type", "content"): "{where} must be a string, got {type}",
    ("model_type", "params"): 'params must be an object, e.g. {{"max_new_tokens": 64, "temperature": 0}}',
    ("list_type", "input_data"): "input_data must be a non-empty list of prompts or message lists",
    ("too_short", "input_data"): "input_data must be a non-empty list of prompts or message lists",
    ("too_long", "input_data"): "input_data has {actual_length} items; send at most {max_length} per request",
}
ITEM = "{where} must be a prompt string or a non-empty list of " + MESSAGE_SHAPE.replace("{", "{{").replace("}", "}}")
ITEM += " messages"
BODY = 'the body must be a JSON object with "input_data" (a list of prompts or message lists) and optional "params"'


def explain(error: dict, said: dict = SAID) -> str:
    """One pydantic error in this endpoint's words."""
    loc, kind, value = error["loc"], error["type"], error.get("input")
    place = where(loc)
    named = [p for p in loc if isinstance(p, str) and p not in ("prompt", "chat")]
    field = named[-1] if named else None
    if kind == "value_error":  # our own validators: the message says what, after the place
        return f"{place} {error['ctx']['error']}" if "ctx" in error else f"{place}: {error['msg']}"
    if kind in ("union_tag_not_found", "union_tag_invalid") or (
        kind in ("too_short", "list_type") and loc[-1] == "chat"
    ):
        return ITEM.format(where=place)
    if kind in ("model_type", "missing") and len(loc) >= 2 and isinstance(loc[-2 if kind == "missing" else -1], int):
        return f"{place.rsplit('.', 1)[0] if kind == 'missing' else place} must be an object with 'role' and 'content'"
    ctx = error.get("ctx", {})
    template = said.get((kind, field)) or said.get((kind, None))
    if template is None:
        return f"{place}: {error['msg']}"
    return template.format(where=place, value=value, type=type(value).__name__, **ctx)


def decode(raw):
    """A raw body (bytes, str, or already decoded) as Python values, or BadRequest."""
    if isinstance(raw, (bytes, bytearray)):
        raw = bytes(raw).decode("utf-8", errors="replace")
    try:
        return json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise BadRequest("the body is nested too deeply to read") from None


def unknown_keys(errors: list, at: tuple) -> list[str]:
    return sorted(str(e["loc"][-1]) for e in errors if e["type"] == "extra_forbidden" and e["loc"][:-1] == at)


def parse_body(body, limit: int) -> tuple[list, dict]:
    """Check a decoded request body; returns (a list of message lists, generation params as a dict)."""
    if not isinstance(body, dict) or "input_data" not in body:
        raise BadRequest(BODY)
    try:
        request = ScoreRequest.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        extra = unknown_keys(errors, ())
        if extra:
            raise BadRequest(f"unknown keys {extra}; the body takes input_data and params") from None
        extra = unknown_keys(errors, ("params",))
        if extra:
            raise BadRequest(f"unknown params {extra}; accepted: {sorted(PARAMS)}") from None
        raise BadRequest(explain(errors[0])) from None
    conversations = [
        [{"role": "user", "content": item}]
        if isinstance(item, str)
        else [{"role": m.role, "content": m.content} for m in item]
        for item in request.input_data
    ]
    return conversations, (request.params or Params()).checked(limit)


def parse_request(raw, limit: int) -> tuple[list, dict]:
    """A raw request body (bytes, str, or already decoded) -> (message lists, params), or BadRequest."""
    return parse_body(decode(raw), limit)
