"""The chat page: `python -m runner stages=[chat] chat.ui=true` serves it on 127.0.0.1 until Ctrl-C.

One small process, llama.cpp-server style: the page at `/` (static/: index.html, chat.js, chat.css and the two
vendored libraries, marked and DOMPurify, listed in static/vendor/VENDORED.md) and the OpenAI routes it calls
(`GET /v1/models`, `POST /v1/chat/completions`, streamed), plus `POST /v1/responses` for other OpenAI clients.
The page is a client of that public API and nothing else.

- access.py: who may call it: its own page only (Host/Origin), with the launch's token (a cookie or a Bearer
  header), and the headers every answer carries;
- proxy.py: the API routes, passed to the endpoint with its key (which never reaches the browser).

The trace of one question: the browser opens the printed `/?token=...`, gets the cookie and `/`; chat.js asks
`/v1/models` (the header: run, model, endpoint; again every 10 s and on focus, so a torn-down or moved endpoint
shows), then POSTs the conversation to `/v1/chat/completions` with `stream: true`; proxy.py checks the body, adds
the key and relays the endpoint's server-sent events; chat.js renders each piece as sanitized Markdown.
"""

import contextlib
from pathlib import Path

from serving.contract import BadRequest, Refused

from .access import OwnPageOnly, SecurityHeaders, TokenGate, new_token
from .proxy import UPSTREAM_TIMEOUT_S, ChatPage, Upstream

__all__ = ["ChatPage", "UPSTREAM_TIMEOUT_S", "Upstream", "make_app", "serve"]

STATIC = Path(__file__).with_name("static")
FILES = {  # every file the page loads: a fixed list, read once
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/chat.js": ("chat.js", "text/javascript; charset=utf-8"),
    "/static/chat.css": ("chat.css", "text/css; charset=utf-8"),
    "/static/vendor/marked.esm.js": ("vendor/marked.esm.js", "text/javascript; charset=utf-8"),
    "/static/vendor/purify.es.mjs": ("vendor/purify.es.mjs", "text/javascript; charset=utf-8"),
}


def file_routes() -> list:
    """A route per file of the page, served from memory; never cached, so a restarted page server's new files and
    token apply at the next load."""
    from starlette.responses import Response
    from starlette.routing import Route

    def route(path: str, name: str, media_type: str):
        content = (STATIC / name).read_bytes()

        async def serve_file(request):
            return Response(content, media_type=media_type, headers={"Cache-Control": "no-store"})

        return Route(path, serve_file)

    return [route(path, name, media_type) for path, (name, media_type) in FILES.items()]


def exception_handlers() -> dict:
    """Refusals and upstream failures as OpenAI error objects, mapped once."""
    from starlette.responses import JSONResponse

    from serving import openai_api as oa

    async def said(request, exc):
        return JSONResponse(oa.error(str(exc), exc.status), exc.status)

    return {BadRequest: said, Refused: said}


def make_app(resolve, log=print, first: Upstream | None = None, token: str | None = None):
    """The page's ASGI app: the security headers on every answer, the Host/Origin check, the token, then the page
    and its API.
    token: the one this launch accepts (a new random one when None; serve() passes the one it prints)."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    chat = ChatPage(resolve, log, first)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await chat.client.aclose()

    routes = [
        *file_routes(),
        Route("/v1/models", chat.models),
        Route("/v1/chat/completions", chat.completions, methods=["POST"]),
        Route("/v1/responses", chat.responses, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=exception_handlers())
    return SecurityHeaders(OwnPageOnly(TokenGate(app, token or new_token()), log))


def serve(resolve, host: str, port: int, out=None, first: Upstream | None = None) -> int:
    """Serve the page in the foreground until Ctrl-C (or SIGTERM); prints its URL, with this launch's token, once
    it listens, flushed (whoever started it may be reading a pipe). OSError when the port cannot be had."""
    from serving import asgi

    out = out or (lambda line: print(line, flush=True))
    token = new_token()
    sock = asgi.bind(host, port)
    port = sock.getsockname()[1]
    asgi.run(
        make_app(resolve, out, first, token),
        sock,
        lambda: out(
            f"[chat] chat page: http://{host}:{port}/?token={token}  (Ctrl-C stops it; the endpoint keeps running; "
            f"OpenAI clients: base_url http://{host}:{port}/v1, api_key the token)"
        ),
    )
    out("[chat] chat page stopped")
    return 0
