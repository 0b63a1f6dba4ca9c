"""Who may use the chat page: ASGI middleware run before any route, outermost first.

- OwnPageOnly: a request naming another Host (DNS rebinding) or sent from another Origin (a page in another tab)
  gets 403.
- TokenGate: the page is private to whoever started it, as Jupyter's is. A random token, new at each launch, is
  printed in the page's URL (`http://127.0.0.1:PORT/?token=...`); opening that URL swaps the token for an HttpOnly,
  SameSite=Strict cookie and redirects to `/`, so the token leaves the address bar and the history. Every other
  request needs that cookie or `Authorization: Bearer <token>` (an OpenAI client given the token as its api_key),
  else 401. Compared in constant time.
- SecurityHeaders: every answer, refusals included, says it may not be framed, sniffed or run scripts from
  anywhere but this server (the page's script is a file of its own, so no inline script is allowed).

Other processes of the same user can read the token from the terminal, as they can read the endpoint's key file:
the gate keeps out other users of the machine and web pages, not the user's own programs.
"""

import hmac
import secrets

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
HOW_TO_OPEN = (
    "This chat page is private to whoever started it: open the URL that "
    "`python -m runner stages=[chat] chat.ui=true` printed (it ends in ?token=...)."
)
NOT_YOURS = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Chat page: open the printed URL</title></head>
<body><h1>401: open the URL the runner printed</h1><p>{HOW_TO_OPEN}</p>
<p>A page left open across a restart of the chat page needs the new URL: each start prints a new token.</p></body>
</html>
"""


def new_token() -> str:
    return secrets.token_urlsafe(32)


def cookie_name(port: int | None) -> str:
    """Cookies are shared by every port of a host: each page's is named after its port, as Jupyter's are, so two
    pages open at once (two runs) keep apart."""
    return f"phi3-chat-{port or 'page'}"


def same(offered: str | None, token: str) -> bool:
    return offered is not None and hmac.compare_digest(offered.encode(), token.encode())


def bearer(authorization: str | None) -> str | None:
    scheme, _, value = (authorization or "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


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


class TokenGate:
    """ASGI middleware: `/?token=<token>` sets the cookie and redirects to `/`; any other request without the
    cookie or the Bearer token gets 401 (OpenAI's error object under /v1, a page saying which URL to open
    elsewhere)."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.requests import Request

        request = Request(scope)
        offered = request.query_params.get("token") if request.url.path == "/" else None
        if offered is not None:
            answer = self.let_in(request) if same(offered, self.token) else self.refuse(request)
            return await answer(scope, receive, send)
        if self.allowed(request):
            return await self.app(scope, receive, send)
        return await self.refuse(request)(scope, receive, send)

    def allowed(self, request) -> bool:
        name = cookie_name(request.url.port)
        return same(request.cookies.get(name), self.token) or same(
            bearer(request.headers.get("authorization")), self.token
        )

    def let_in(self, request):
        """The token swapped for a cookie the page's own requests carry and its script cannot read."""
        from starlette.responses import RedirectResponse

        answer = RedirectResponse("/", 303, headers={"Cache-Control": "no-store"})
        answer.set_cookie(cookie_name(request.url.port), self.token, httponly=True, samesite="strict", path="/")
        return answer

    def refuse(self, request):
        from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse

        from serving import openai_api as oa

        challenge = {"WWW-Authenticate": "Bearer", "Cache-Control": "no-store"}
        if request.url.path.startswith("/v1/"):
            message = "missing or wrong token: send 'Authorization: Bearer <token>' (the token in the page's URL)"
            return JSONResponse(oa.error(message, 401), 401, headers=challenge)
        if request.url.path == "/":
            return HTMLResponse(NOT_YOURS, 401, headers=challenge)
        return PlainTextResponse(HOW_TO_OPEN, 401, headers=challenge)


class SecurityHeaders:
    """ASGI middleware: SECURITY_HEADERS on every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.datastructures import MutableHeaders

        async def with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        return await self.app(scope, receive, with_headers)
