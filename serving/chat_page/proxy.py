"""The page's API routes over one upstream endpoint, whose key this process holds and the browser never sees.

- an endpoint that speaks OpenAI's API itself (the local one): chat completions and Responses API requests, and
  their streams, are passed through;
- one that speaks only `/score` (a cloud deployment under its vendor's inference server): a chat request is sent
  there and the answer comes back in one piece (one chunk, or a Response's events at once), as that server does not
  stream.
A body is read only up to MAX_BODY_BYTES, and must be one JSON object, before anything is sent on. The endpoint is
looked up again when it stops answering or refuses the key (a redeploy moves a local endpoint to a new port and
key); when that fails too (torn down), the page is told why and how to bring it back.
"""

import json
import time
from dataclasses import dataclass

from common.score_client import DEFAULT_TIMEOUT_S
from serving.contract import BadRequest, Refused, decode
from serving.serve import MAX_BODY_BYTES  # the endpoint's own limit: a bigger body would be refused there anyway

UPSTREAM_TIMEOUT_S = DEFAULT_TIMEOUT_S  # above the endpoint's own request timeout, so its 504 reaches the page


@dataclass
class Upstream:
    kind: str  # "openai" (base URL ending in /v1) or "score" (a scoring URI taking the /score contract)
    url: str
    key: str
    model: str
    limit: int  # max_new_tokens the endpoint allows (score mode checks requests before sending them)
    describe: str  # what the page's header says it talks to (no key, no subscription)
    run_name: str = ""  # the run the page's header names
    bring_back: str = ""  # the command that brings the endpoint back once it is torn down


async def read_body(request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, read as it arrives and never past limit: 413 at once for a Content-Length above it, and as soon as
    a body sent without one (chunked) goes past it."""
    too_big = f"the body is over {limit} bytes"
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refused(413, too_big)
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise Refused(413, too_big)
    if not body:
        raise BadRequest("send a JSON object as the body")
    return bytes(body)


def json_object(raw: bytes) -> dict:
    """The body decoded, or BadRequest (400) for anything but one JSON object: invalid, nested past what the
    decoder can follow, a list, a string."""
    body = decode(raw)
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object, not {type(body).__name__}")
    return body


class ChatPage:
    """The page's API routes; resolve() -> Upstream is called at start (unless first is given: the caller looked
    it up already) and whenever the endpoint seems to have moved."""

    def __init__(self, resolve, log=print, first: Upstream | None = None):
        import httpx

        self.resolve, self.log, self.up = resolve, log, first or resolve()
        self.lookup_failed = ""  # why the last look-up failed: said on the page, with how to bring it back
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(UPSTREAM_TIMEOUT_S, connect=10))

    async def models(self, request):
        """The served model, what the page talks to and for which run; for an OpenAI endpoint asked each time, so
        a page polling this learns when its endpoint is gone or moved."""
        from starlette.responses import JSONResponse

        from serving import openai_api as oa

        listed = oa.models(self.up.model, int(time.time()))
        if self.up.kind == "openai":
            listed = await self.upstream_models()
        up = self.up
        return JSONResponse({**listed, "endpoint": up.describe, "run": up.run_name})

    async def upstream_models(self) -> dict:
        resp = await self.send("GET", "/models")
        try:
            listed = resp.json() if resp.status_code == 200 else None
        except ValueError:
            listed = None
        if not (isinstance(listed, dict) and isinstance(listed.get("data"), list)):
            raise Refused(502, f"the endpoint answered GET /v1/models with {resp.status_code}")
        return listed

    async def completions(self, request):
        raw = await read_body(request)
        body = json_object(raw)
        if self.up.kind == "openai":
            return await self.through("/chat/completions", raw, bool(body.get("stream")))
        return await self.via_score(body, self.up)

    async def responses(self, request):
        raw = await read_body(request)
        body = json_object(raw)
        if self.up.kind == "openai":
            return await self.through("/responses", raw, bool(body.get("stream")))
        return await self.responses_via_score(body, self.up)

    async def send(self, method: str, path: str, body=None, stream=False):
        """The upstream response, or Refused (502); the endpoint is looked up again once if it cannot be reached
        or refuses the key."""
        import httpx

        for attempt in (0, 1):
            url = self.up.url + path
            headers = {"Authorization": f"Bearer {self.up.key}", "Content-Type": "application/json"}
            try:
                resp = await self.client.send(
                    self.client.build_request(method, url, headers=headers, content=body), stream=stream
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # not sent: safe to send again
                problem = f"cannot reach the endpoint at {url.split('?')[0]} ({type(exc).__name__}): is it running?"
                if attempt == 1 or not await self.look_up_again():
                    raise Refused(502, self.with_way_back(problem)) from None
                continue
            except httpx.HTTPError as exc:  # sent, and maybe generating: not sent twice
                raise Refused(
                    502, f"the endpoint at {url.split('?')[0]} did not answer ({type(exc).__name__})"
                ) from None
            if resp.status_code == 401 and attempt == 0:
                await resp.aclose()
                if await self.look_up_again():
                    continue
                raise Refused(502, self.with_way_back("the endpoint refused the key"))
            return resp

    def with_way_back(self, problem: str) -> str:
        """The problem, why the endpoint could not be found again, and the command that brings it back."""
        parts = [problem]
        if self.lookup_failed:
            parts.append(f"looking it up again: {self.lookup_failed}")
        if self.up.bring_back and self.up.bring_back not in self.lookup_failed:
            parts.append(f"to bring it back: {self.up.bring_back}")
        return "; ".join(parts)

    async def look_up_again(self) -> bool:
        """Read the endpoint afresh (a redeploy moves it); off the event loop, as a lookup may block on the network."""
        import anyio

        try:
            self.up = await anyio.to_thread.run_sync(self.resolve)
            self.lookup_failed = ""
            return True
        except Exception as exc:  # no endpoint any more (torn down), the cloud unreachable: said on the page
            self.log(f"[chat] looking the endpoint up again failed: {exc}")
            self.lookup_failed = str(exc)
            return False

    async def through(self, path: str, raw: bytes, stream: bool):
        """An OpenAI-speaking endpoint: the body passed on as it came to <base><path>, the answer (or stream)
        passed back."""
        from starlette.responses import StreamingResponse

        from serving import openai_api as oa

        resp = await self.send("POST", path, raw, stream=True)
        if not stream or resp.status_code != 200:
            return await self.whole(resp)
        return StreamingResponse(self.relay(resp), media_type="text/event-stream", headers=oa.SSE_HEADERS)

    async def whole(self, resp):
        import httpx
        from starlette.responses import Response

        try:
            body = await resp.aread()
        except httpx.HTTPError as exc:
            raise Refused(502, f"the endpoint stopped answering ({type(exc).__name__})") from None
        finally:
            await resp.aclose()
        return Response(body, resp.status_code, media_type=resp.headers.get("content-type"))

    async def relay(self, resp):
        import httpx

        from serving import openai_api as oa

        try:
            async for part in resp.aiter_raw():
                yield part
        except httpx.HTTPError as exc:  # the endpoint died mid-answer: an error event, not a cut-off stream
            yield oa.sse(oa.error(f"the endpoint stopped answering ({type(exc).__name__})", 502))
        finally:  # the page went away (or the answer ended): close upstream, which stops the generation
            await resp.aclose()

    async def ask_score(self, messages: list, params: dict, up: Upstream) -> str:
        """The answer of a /score endpoint to one conversation, or Refused with what it said."""
        from common import score_client

        resp = await self.send("POST", "", json.dumps(score_client.payload(messages, params)).encode())
        try:
            if resp.status_code != 200:
                raise score_client.refusal(resp.status_code, resp.content, up.url.split("?")[0], "the endpoint's")
            return score_client.answers_of(resp.content)[0]
        except score_client.ScoreError as exc:
            raise Refused(exc.status or 502, str(exc)) from None

    async def responses_via_score(self, body: dict, up: Upstream):
        """The Responses API over a /score endpoint: the request checked here (the endpoint's own rules and limit),
        the conversation sent as /score's body, the answer said as a Response (its events at once when streamed:
        /score does not stream). /score says no token counts: usage is null."""
        from starlette.responses import JSONResponse, StreamingResponse

        from serving import openai_api as oa
        from serving import responses_api as ra

        messages, params, opts = ra.parse_responses(body, up.limit, up.model)
        done = {"text": await self.ask_score(messages, params, up), "finish_reason": "stop"}
        rid = ra.new_id()
        if not opts["stream"]:
            return JSONResponse(ra.response_json(rid, opts, done))

        async def events():
            for event in ra.Events(rid, opts).whole(done):
                yield event

        return StreamingResponse(events(), media_type="text/event-stream", headers=oa.SSE_HEADERS)

    async def via_score(self, body: dict, up: Upstream):
        """A /score endpoint: the chat request checked here, sent as /score's body, the answer sent back as a chat
        completion (one chunk when streamed: /score does not stream)."""
        from starlette.responses import JSONResponse, StreamingResponse

        from serving import openai_api as oa
        from serving.detokenize import cut_at_stops

        messages, params, opts = oa.parse_chat(body, up.limit, up.model)
        text, _ = cut_at_stops(await self.ask_score(messages, params, up), opts["stop"])
        cid = oa.new_id()
        if not opts["stream"]:
            return JSONResponse(oa.completion(cid, up.model, text, "stop", 0, 0))

        async def one_chunk():
            for delta, finish in (
                ({"role": "assistant", "content": ""}, None),
                ({"content": text}, None),
                ({}, "stop"),
            ):
                yield oa.sse(oa.chunk(cid, up.model, delta, finish))
            yield oa.sse("[DONE]")

        return StreamingResponse(one_chunk(), media_type="text/event-stream", headers=oa.SSE_HEADERS)
