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
ignored, as OpenAI-compatible servers do. Standard library only: no heavy import, so it is cheap to fuzz.
"""

import json
import time
import uuid

from common.chats import is_text
from serving.contract import BadRequest, parse_messages, parse_params

MAX_STOP = 4  # OpenAI's own limit on stop sequences
ROLES = {"system", "user", "assistant", "developer"}  # developer: newer clients' name for system


class NotFound(BadRequest):
    """A model this endpoint does not serve (HTTP 404)."""


def _text_of(content, where: str) -> str:
    """A message's content: a string, or OpenAI's list of parts of which only text parts are allowed here."""
    if isinstance(content, list):
        texts = []
        for k, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise BadRequest(f"{where}.content[{k}] is a {kind!r} part; this model reads text parts only")
            texts.append(part["text"])
        return "".join(texts)
    return content


class Incremental:
    """Text of a growing list of token ids, handed out in pieces that always add up to the final answer: the
    stripped decode /score returns, cut before the first stop string. Held back until they are safe: leading and
    trailing whitespace (the answer is stripped), a partial UTF-8 character, and the tail that may begin a stop."""

    def __init__(self, decode, stops=()):
        self.decode, self.stops, self.ids, self.sent, self.stopped = decode, list(stops), [], "", False
        self.hold = max((len(s) for s in self.stops), default=1) - 1

    def _visible(self, ids) -> str:
        text = self.decode(ids).lstrip()
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            text = text[: min(hits)]
        return text

    def _hand_out(self, safe: str) -> str:
        if len(safe) <= len(self.sent) or not safe.startswith(self.sent):
            return ""  # nothing new, or a decode that rewrote its past (the final piece settles it)
        piece, self.sent = safe[len(self.sent) :], safe
        return piece

    def push(self, new_ids) -> str:
        if self.stopped:
            return ""
        self.ids += new_ids
        text = self._visible(self.ids)
        if self.stopped:
            return self._hand_out(text.rstrip())
        safe = text[: max(len(text) - self.hold, 0)].rstrip().rstrip("\ufffd")
        return self._hand_out(safe)

    def finish(self, all_ids) -> str:
        """The last piece, from every generated id."""
        stopped, self.stopped = self.stopped, False
        final = self._visible(list(all_ids)).strip()
        self.stopped = self.stopped or stopped
        if not final.startswith(self.sent):
            return ""
        return self._hand_out(final)


def parse_messages_openai(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest('messages must be a non-empty list of {"role": "system|user|assistant", "content": "..."}')
    out = []
    for j, m in enumerate(messages):
        if isinstance(m, dict) and "content" in m:
            m = {
                "role": "system" if m.get("role") == "developer" else m.get("role"),
                "content": _text_of(m["content"], f"messages[{j}]"),
            }
        try:
            out += parse_messages([m], 0)
        except BadRequest as exc:  # same rule as /score, said in this route's terms
            raise BadRequest(str(exc).replace("input_data[0][0]", f"messages[{j}]", 1)) from None
    return out


def parse_stop(stop) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOP
        or not all(isinstance(s, str) and s and is_text(s) for s in stops)
    ):
        raise BadRequest(f"stop must be a non-empty string or a list of at most {MAX_STOP} of them, got {stop!r}")
    return stops


def refuse_unsupported(body: dict, served_model: str):
    """BadRequest / NotFound for what this endpoint does not do: another model, several choices, tools, logprobs,
    a structured response format."""
    model = body.get("model")
    if model not in (None, "", served_model):
        raise NotFound(f"model {model!r} is not served here; this endpoint serves {served_model!r} (GET /v1/models)")
    if body.get("n") not in (None, 1):
        raise BadRequest(f"n={body['n']!r}: this endpoint returns one choice per request; send n=1 or leave it out")
    for name, off in (("tools", (None, [])), ("functions", (None, [])), ("logprobs", (None, False))):
        if body.get(name, None) not in off:
            raise BadRequest(f"{name} is not supported by this endpoint; leave it out")
    fmt = body.get("response_format")
    if fmt not in (None, {"type": "text"}):
        raise BadRequest(f"response_format {fmt!r} is not supported; this endpoint answers in plain text")


def generation_params(body: dict, limit: int) -> dict:
    """The body's max_tokens, temperature and top_p as /score's params (common/generation.py), checked."""
    params = {}
    tokens = body.get("max_completion_tokens")
    tokens = body.get("max_tokens") if tokens is None else tokens  # an explicit null is as good as absent
    if tokens is not None:
        params["max_new_tokens"] = tokens
    temperature = body.get("temperature")
    if temperature is not None:
        number = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
        if number and temperature > 2:
            raise BadRequest(f"temperature must be between 0 and 2, got {temperature!r}")
        params["temperature"] = temperature
        params["do_sample"] = number and temperature > 0
    if body.get("top_p") is not None:
        params["top_p"] = body["top_p"]
    try:
        return parse_params(params, limit)
    except BadRequest as exc:  # name the route's own settings in the message
        raise BadRequest(str(exc).replace("params.max_new_tokens", "max_tokens").replace("params.", "")) from None


def parse_chat(body, limit: int, served_model: str) -> tuple[list[dict], dict, dict]:
    """A decoded chat-completions body -> (messages, generation params, options), or BadRequest / NotFound.

    options: stream (bool), include_usage (bool), stop (list of str), model (the served model's id).
    """
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object with "messages"')
    if "messages" not in body:
        raise BadRequest('the body has no "messages": send [{"role": "user", "content": "..."}]')
    refuse_unsupported(body, served_model)
    messages = parse_messages_openai(body["messages"])
    params = generation_params(body, limit)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(f"stream must be true or false, got {stream!r}")
    so = body.get("stream_options") or {}
    if not isinstance(so, dict):
        raise BadRequest('stream_options must be an object, e.g. {"include_usage": true}')
    options = {
        "stream": stream,
        "include_usage": bool(so.get("include_usage")),
        "stop": parse_stop(body.get("stop")),
        "model": served_model,
    }
    return messages, params, options


def parse_chat_request(raw, limit: int, served_model: str):
    """A raw body (bytes or str) -> parse_chat's result, or BadRequest."""
    try:
        body = json.loads(raw.decode("utf-8", errors="replace") if isinstance(raw, (bytes, bytearray)) else raw)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise BadRequest("the body is nested too deeply to read") from None
    return parse_chat(body, limit, served_model)


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


def sse(obj) -> bytes:
    """One server-sent event: `data: <json>` and a blank line; the string [DONE] ends a stream."""
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n".encode()


def models(model: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "phi3-runner"}]}
