"""The scoring contract: what a request body may hold, checked before any model work.

Shared by the scoring script (local server and Azure deployment); no heavy import, so it is cheap to fuzz.
Request body (the tutorial's payload):
    {"input_data": ["a prompt", [{"role": "user", "content": "..."}, ...]],
     "params": {"max_new_tokens": 64, "temperature": 0.0, "do_sample": false, "top_p": 1.0, "return_full_text": false}}
"""

import json
import math

from common.chats import is_text, message_problem
from common.generation import PARAMS as GENERATION

DEFAULT_LIMIT = 256
MAX_INPUTS = 32  # per request: bounds the time one request can hold the model
# name -> (accepted types, default): the generation settings plus one of the scoring contract's own.
# bool is checked apart because it is an int in Python.
PARAMS = {
    **{name: (types, default) for name, (types, _, default) in GENERATION.items()},
    "return_full_text": (bool, False),
}


class BadRequest(ValueError):
    """The request body is not something we can answer; the message says what to fix (HTTP 400)."""


def parse_messages(item, index: int) -> list[dict]:
    if isinstance(item, str):
        if not item.strip():
            raise BadRequest(f"input_data[{index}] is an empty prompt")
        if not is_text(item):
            raise BadRequest(
                f"input_data[{index}] holds a lone surrogate (a \\ud800-\\udfff escape), which is not text"
            )
        return [{"role": "user", "content": item}]
    if not isinstance(item, list) or not item:
        raise BadRequest(
            f"input_data[{index}] must be a prompt string or a non-empty list of "
            '{"role": "system|user|assistant", "content": "..."} messages'
        )
    for j, m in enumerate(item):
        problem = message_problem(m)  # the training rows' own rule for a message
        if problem:
            raise BadRequest(f"input_data[{index}][{j}]{problem}")
    return [{"role": m["role"], "content": m["content"]} for m in item]


def parse_params(params, limit: int) -> dict:
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise BadRequest('params must be an object, e.g. {"max_new_tokens": 64, "temperature": 0}')
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise BadRequest(f"unknown params {unknown}; accepted: {sorted(PARAMS)}")
    out = {}
    for name, (types, default) in PARAMS.items():
        if name == "max_new_tokens":
            default = min(default, limit)  # a request that leaves it out is never refused for the default
        value = params.get(name, default)
        is_bool = isinstance(value, bool)
        if (types is bool) != is_bool or not isinstance(value, types):
            raise BadRequest(f"params.{name} must be {'true or false' if types is bool else 'a number'}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise BadRequest(f"params.{name} must be a finite number, got {value!r}")
        out[name] = value
    if out["max_new_tokens"] < 1:
        raise BadRequest("params.max_new_tokens must be at least 1")
    if out["max_new_tokens"] > limit:
        raise BadRequest(f"params.max_new_tokens={out['max_new_tokens']} is over this endpoint's limit of {limit}")
    if out["temperature"] < 0:
        raise BadRequest("params.temperature must be 0 (greedy) or more")
    if not 0 < out["top_p"] <= 1:
        raise BadRequest("params.top_p must be in (0, 1]")
    return out


def parse_body(body, limit: int) -> tuple[list, dict]:
    """Check a decoded request body; returns (a list of message lists, generation params)."""
    if not isinstance(body, dict) or "input_data" not in body:
        raise BadRequest(
            'the body must be a JSON object with "input_data" (a list of prompts or message lists) '
            'and optional "params"'
        )
    unknown = sorted(set(body) - {"input_data", "params"})
    if unknown:
        raise BadRequest(f"unknown keys {unknown}; the body takes input_data and params")
    items = body["input_data"]
    if not isinstance(items, list) or not items:
        raise BadRequest("input_data must be a non-empty list of prompts or message lists")
    if len(items) > MAX_INPUTS:
        raise BadRequest(f"input_data has {len(items)} items; send at most {MAX_INPUTS} per request")
    return [parse_messages(x, i) for i, x in enumerate(items)], parse_params(body.get("params"), limit)


def parse_request(raw, limit: int) -> tuple[list, dict]:
    """A raw request body (bytes, str, or already decoded) -> (message lists, params), or BadRequest."""
    if isinstance(raw, (bytes, bytearray)):
        raw = bytes(raw).decode("utf-8", errors="replace")
    try:
        body = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise BadRequest("the body is nested too deeply to read") from None
    return parse_body(body, limit)
