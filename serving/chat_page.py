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

PAGE = Path(__file__).with_name("chat_page.html")
UPSTREAM_TIMEOUT_S = 200  # above the endpoint's own request timeout (180 s), so its 504 reaches the page


@dataclass
class Upstream:
    kind: str  # "openai" (base URL ending in /v1) or "score" (a scoring URI taking the /score contract)
    url: str
    key: str
    model: str
    limit: int  # max_new_tokens the endpoint allows (score mode checks requests before sending them)
    describe: str  # what the page's header says it talks to (no key, no subscription)


def make_app(resolve, log=print, first: Upstream | None = None):  # noqa: C901  (to split, as serve.make_app)
    """The page's ASGI app; resolve() -> Upstream, called at start (unless first is given: the caller looked it
    up already) and whenever the endpoint seems to have moved."""
    import anyio
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    from serving import openai_api as oa
    from serving.contract import BadRequest

    state = {"up": first or resolve()}
    client = httpx.AsyncClient(timeout=httpx.Timeout(UPSTREAM_TIMEOUT_S, connect=10))
    html = PAGE.read_text()

    def allowed(request) -> bool:
        port = request.url.port
        hosts = {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}
        origin = request.headers.get("origin")
        return request.headers.get("host") in hosts and (origin is None or origin in {f"http://{h}" for h in hosts})

    def refuse(request):
        log(
            f"[chat] refused a request from Host {request.headers.get('host')!r}, "
            f"Origin {request.headers.get('origin')!r}"
        )
        return JSONResponse(oa.error("this chat server answers only its own page on 127.0.0.1", 403), 403)

    def headers(up: Upstream) -> dict:
        return {"Authorization": f"Bearer {up.key}", "Content-Type": "application/json"}

    async def send(method: str, path: str, body=None, stream=False):
        """The upstream response; the endpoint is looked up again once if it cannot be reached or refuses the key."""
        for attempt in (0, 1):
            up = state["up"]
            url = up.url + path
            try:
                req = client.build_request(method, url, headers=headers(up), content=body)
                resp = await client.send(req, stream=stream)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # not sent: safe to send again
                problem = f"cannot reach the endpoint at {url.split('?')[0]} ({type(exc).__name__}): is it running?"
                if attempt == 1 or not await look_up_again():
                    return None, problem
                continue
            except httpx.HTTPError as exc:  # sent, and maybe generating: not sent twice
                return None, f"the endpoint at {url.split('?')[0]} did not answer ({type(exc).__name__})"
            if resp.status_code == 401 and attempt == 0:
                await resp.aclose()
                if await look_up_again():
                    continue
                return None, "the endpoint refused the key, and looking it up again failed"
            return resp, None

    async def look_up_again() -> bool:
        """Read the endpoint afresh (a redeploy moves it); off the event loop, as a backend's lookup may block on the network."""
        try:
            state["up"] = await anyio.to_thread.run_sync(resolve)
            return True
        except Exception as exc:  # no endpoint any more (torn down), the cloud unreachable: said on the page
            log(f"[chat] looking the endpoint up again failed: {exc}")
            return False

    async def page(request):
        if not allowed(request):
            return refuse(request)
        return HTMLResponse(
            html,
            headers={
                "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                "style-src 'self' 'unsafe-inline'; img-src 'self' data:",
                "Cache-Control": "no-store",
                "Referrer-Policy": "no-referrer",
            },
        )

    async def models(request):
        if not allowed(request):
            return refuse(request)
        up = state["up"]
        return JSONResponse({**oa.models(up.model, int(time.time())), "endpoint": up.describe})

    async def completions(request):
        if not allowed(request):
            return refuse(request)
        raw = await request.body()
        up = state["up"]
        if up.kind == "openai":
            return await through(raw)
        return await via_score(raw, up)

    async def through(raw: bytes):
        try:
            wants_stream = bool(json.loads(raw).get("stream"))
        except (ValueError, AttributeError):
            wants_stream = False
        resp, problem = await send("POST", "/chat/completions", raw, stream=True)
        if resp is None:
            return JSONResponse(oa.error(problem, 502), 502)
        if not wants_stream or resp.status_code != 200:
            try:
                body = await resp.aread()
            except httpx.HTTPError as exc:
                return JSONResponse(oa.error(f"the endpoint stopped answering ({type(exc).__name__})", 502), 502)
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

        return StreamingResponse(relay(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def via_score(raw: bytes, up: Upstream):
        try:
            messages, params, opts = oa.parse_chat_request(raw, up.limit, up.model)
        except oa.NotFound as exc:
            return JSONResponse(oa.error(str(exc), 404), 404)
        except BadRequest as exc:
            return JSONResponse(oa.error(str(exc), 400), 400)
        body = json.dumps({"input_data": [messages], "params": {**params, "return_full_text": False}})
        resp, problem = await send("POST", "", body.encode())
        if resp is None:
            return JSONResponse(oa.error(problem, 502), 502)
        try:
            answer = resp.json()
        except ValueError:
            answer = None
        if resp.status_code != 200:
            detail = answer.get("error", answer) if isinstance(answer, dict) else resp.text[:300]
            return JSONResponse(
                oa.error(f"the endpoint answered {resp.status_code}: {detail}", resp.status_code), resp.status_code
            )
        if isinstance(answer, dict) and "predictions" in answer:
            answer = answer["predictions"]
        if not isinstance(answer, list) or not answer or not isinstance(answer[0], str):
            return JSONResponse(oa.error(f"unexpected answer from the endpoint: {str(answer)[:200]}", 502), 502)
        text, cut = answer[0], [i for i in (answer[0].find(s) for s in opts["stop"]) if i >= 0]
        text, finish = (text[: min(cut)].rstrip(), "stop") if cut else (text, "stop")
        cid = oa.new_id()
        if not opts["stream"]:
            return JSONResponse(oa.completion(cid, up.model, text, finish, 0, 0))

        async def one_chunk():  # /score does not stream: the whole answer in one piece
            yield oa.sse(oa.chunk(cid, up.model, {"role": "assistant", "content": ""}))
            yield oa.sse(oa.chunk(cid, up.model, {"content": text}))
            yield oa.sse(oa.chunk(cid, up.model, {}, finish))
            yield oa.sse("[DONE]")

        return StreamingResponse(one_chunk(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    routes = [
        Route("/", page),
        Route("/v1/models", models),
        Route("/v1/chat/completions", completions, methods=["POST"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await client.aclose()

    return Starlette(routes=routes, lifespan=lifespan)


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
