"""The local endpoint's key file and request log: nothing from a request's headers is ever printed."""

import stat
import time
from pathlib import Path


def read_key(path: Path) -> str:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SystemExit(f"error: {path} is readable by others (mode {stat.filemode(mode)}); chmod 600 it")
    key = path.read_text().strip()
    if len(key) < 16:
        raise SystemExit(f"error: the key in {path} is too short (at least 16 characters)")
    return key


def log(msg: str):
    print(f"{time.strftime('%d/%b/%Y %H:%M:%S')} {msg}", flush=True)


def printable(text: str) -> str:
    """text with control characters (a decoded %0a, an escape sequence) written as escapes: a request path can
    neither add a line to the log nor reach the terminal of whoever tails it."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class AccessLog:
    """One line per request: method, path, status, seconds. Headers (and so the key) never reach the log."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.time(), [None]

        async def send_noting(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting)
        finally:
            client = (scope.get("client") or ("-",))[0]
            log(f'{client} "{scope["method"]} {printable(scope["path"])}" {status[0]} {time.time() - t0:.2f}s')
