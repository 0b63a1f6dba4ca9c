"""The chat page: `python -m runner stages=[chat] chat.ui=true` serves it on 127.0.0.1 until Ctrl-C.

One small process, llama.cpp-server style: the page at `/` and the OpenAI routes it calls (`GET /v1/models`,
`POST /v1/chat/completions`, streamed). The page is a client of that public API and nothing else. This process
holds the endpoint's key and adds it to what it forwards, so the key never reaches the browser:
- an endpoint that speaks OpenAI's API itself (the local one): requests and streams are passed through;
- one that speaks only `/score` (a cloud deployment under its vendor's inference server): the conversation is
  sent there and the answer comes back as one chunk, as that server does not stream.
A page that stops reading (Stop, a closed tab) closes the upstream stream too, and the endpoint stops generating.

Only pages this process served may call it: requests naming another Host (DNS rebinding) or coming from another
Origin (a web page in another tab) are refused with 403. The endpoint is looked up again when it stops
answering or refuses the key (a redeploy moves a local endpoint to a new port and key).
"""

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from common.score_client import DEFAULT_TIMEOUT_S
from serving.contract import BadRequest, Refused

PAGE = Path(__file__).with_name("chat_page.html")
UPSTREAM_TIMEOUT_S = DEFAULT_TIMEOUT_S  # above the endpoint's own request timeout, so its 504 reaches the page


@dataclass
class Upstream:
    kind: str  # "openai" (base URL ending in /v1) or "score" (a scoring URI taking the /score contract)
    url: str
    key: str
    model: str
    limit: int  # max_new_tokens the endpoint allows (score mode checks requests before sending them)
    describe: str  # what the page's header says it talks to (no key, no subscription)


PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


class OwnPageOnly:
    """ASGI middleware: a request naming another Host (DNS rebinding) or sent from another Origin (a page in another
    tab) gets 403 before any route runs."""

    def __init__(self, app, log=print):
        self.app, self.log = app, log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.requests import Request
        from starlette.responses import JSONResponse

        from serving import openai_api as oa

        request = Request(scope)
        port = request.url.port
        hosts = {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}
        host, origin = request.headers.get("host"), request.headers.get("origin")
        if host in hosts and (origin is None or origin in {f"http://{h}" for h in hosts}):
            return await self.app(scope, receive, send)
        self.log(f"[chat] refused a request from Host {host!r}, Origin {origin!r}")
        refusal = oa.error("this chat server answers only its own page on 127.0.0.1", 403)
        return await JSONResponse(refusal, 403)(scope, receive, send)


class ChatPage:
    """The page's routes over one upstream endpoint; resolve() -> Upstream is called at start (unless first is
    given: the caller looked it up already) and whenever the endpoint seems to have moved."""

    def __init__(self, resolve, log=print, first: Upstream | None = None):
        import httpx

        self.resolve, self.log, self.up = resolve, log, first or resolve()
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(UPSTREAM_TIMEOUT_S, connect=10))
        self.html = PAGE.read_text()

    async def page(self, request):
        from starlette.responses import HTMLResponse

        return HTMLResponse(self.html, headers=PAGE_HEADERS)

    async def models(self, request):
        from starlette.responses import JSONResponse

        from serving import openai_api as oa

        return JSONResponse({**oa.models(self.up.model, int(time.time())), "endpoint": self.up.describe})

    async def completions(self, request):
        raw = await request.body()
        if self.up.kind == "openai":
            return await self.through(raw)
        return await self.via_score(raw, self.up)

    async def send(self, method: str, path: str, body=None, stream=False):
        """The upstream response, or Refused (502); the endpoint is looked up again once if it cannot be reached
        or refuses the key."""
        import httpx

        for attempt in (0, 1):
            up = self.up
            url = up.url + path
            headers = {"Authorization": f"Bearer {up.key}", "Content-Type": "application/json"}
            try:
                resp = await self.client.send(
                    self.client.build_request(method, url, headers=headers, content=body), stream=stream
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # not sent: safe to send again
                problem = f"cannot reach the endpoint at {url.split('?')[0]} ({type(exc).__name__}): is it running?"
                if attempt == 1 or not await self.look_up_again():
                    raise Refused(502, problem) from None
                continue
            except httpx.HTTPError as exc:  # sent, and maybe generating: not sent twice
                raise Refused(
                    502, f"the endpoint at {url.split('?')[0]} did not answer ({type(exc).__name__})"
                ) from None
            if resp.status_code == 401 and attempt == 0:
                await resp.aclose()
                if await self.look_up_again():
                    continue
                raise Refused(502, "the endpoint refused the key, and looking it up again failed")
            return resp

    async def look_up_again(self) -> bool:
        """Read the endpoint afresh (a redeploy moves it); off the event loop, as a lookup may block on the network."""
        import anyio

        try:
            self.up = await anyio.to_thread.run_sync(self.resolve)
            return True
        except Exception as exc:  # no endpoint any more (torn down), the cloud unreachable: said on the page
            self.log(f"[chat] looking the endpoint up again failed: {exc}")
            return False

    async def through(self, raw: bytes):
        """An OpenAI-speaking endpoint: the request passed on, the answer (or stream) passed back."""
        import httpx
        from starlette.responses import Response, StreamingResponse

        from serving import openai_api as oa

        try:
            wants_stream = bool(json.loads(raw).get("stream"))
        except (ValueError, AttributeError):
            wants_stream = False
        resp = await self.send("POST", "/chat/completions", raw, stream=True)
        if not wants_stream or resp.status_code != 200:
            try:
                body = await resp.aread()
            except httpx.HTTPError as exc:
                raise Refused(502, f"the endpoint stopped answering ({type(exc).__name__})") from None
            finally:
                await resp.aclose()
            return Response(body, resp.status_code, media_type=resp.headers.get("content-type"))

        async def relay():
            try:
                async for part in resp.aiter_raw():
                    yield part
            except httpx.HTTPError as exc:  # the endpoint died mid-answer: an error event, not a cut-off stream
                yield oa.sse(oa.error(f"the endpoint stopped answering ({type(exc).__name__})", 502))
            finally:  # the page went away (or the answer ended): close upstream, which stops the generation
                await resp.aclose()

        return StreamingResponse(relay(), media_type="text/event-stream", headers=oa.SSE_HEADERS)

    async def via_score(self, raw: bytes, up: Upstream):
        """A /score endpoint: the chat request checked here, sent as /score's body, the answer sent back as a chat
        completion (one chunk when streamed: /score does not stream)."""
        from starlette.responses import JSONResponse, StreamingResponse

        from common import score_client
        from serving import openai_api as oa
        from serving.detokenize import cut_at_stops

        messages, params, opts = oa.parse_chat_request(raw, up.limit, up.model)
        resp = await self.send("POST", "", json.dumps(score_client.payload(messages, params)).encode())
        try:
            if resp.status_code != 200:
                raise score_client.refusal(resp.status_code, resp.content, up.url.split("?")[0], "the endpoint's")
            answer = score_client.answers_of(resp.content)[0]
        except score_client.ScoreError as exc:
            raise Refused(exc.status or 502, str(exc)) from None
        text, _ = cut_at_stops(answer, opts["stop"])
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


def exception_handlers() -> dict:
    """Refusals and upstream failures as OpenAI error objects, mapped once."""
    from starlette.responses import JSONResponse

    from serving import openai_api as oa

    async def said(request, exc):
        return JSONResponse(oa.error(str(exc), exc.status), exc.status)

    return {BadRequest: said, Refused: said}


def make_app(resolve, log=print, first: Upstream | None = None):
    """The page's ASGI app: the Host/Origin check, then the page and its two API routes."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    chat = ChatPage(resolve, log, first)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await chat.client.aclose()

    routes = [
        Route("/", chat.page),
        Route("/v1/models", chat.models),
        Route("/v1/chat/completions", chat.completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=exception_handlers())
    return OwnPageOnly(app, log)


def serve(resolve, host: str, port: int, out=print, first: Upstream | None = None) -> int:
    """Serve the page in the foreground until Ctrl-C (or SIGTERM); prints its URL once it listens. OSError when
    the port cannot be had."""
    from serving import asgi

    sock = asgi.bind(host, port)
    port = sock.getsockname()[1]
    asgi.run(
        make_app(resolve, out, first),
        sock,
        lambda: out(f"[chat] chat page: http://{host}:{port}/  (Ctrl-C stops it; the endpoint keeps running)"),
    )
    out("[chat] chat page stopped")
    return 0
