"""A real browser for the chat tests: Debian's headless Chromium, driven over its DevTools protocol.

No driver library: Chromium is started with --remote-debugging-port, and its page target is spoken to over a
websocket (aiohttp's client) with the protocol's own commands (Page.navigate, Runtime.evaluate, Input.*).
Where no Chromium is installed the tests that need it skip, except under CI=true, where they fail:
`.ci/run` installs it (apt-get install chromium).
"""

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str:
    """The browser's path; skips the test when there is none (fails under CI=true)."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    message = "no Chromium found: apt-get install chromium (the browser tests drive it headless)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


class Browser:
    """One headless Chromium with one page; every method is a coroutine. Use `async with Browser() as b`."""

    def __init__(self):
        self.profile = Path(tempfile.mkdtemp(prefix="phi3-chromium-"))
        self.requests: list[dict] = []  # every request the page made: url, method, headers, postData
        self.console: list[str] = []  # what the page logged
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}

    async def __aenter__(self):
        import aiohttp

        self.proc = subprocess.Popen(
            [
                chromium_path(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}",
                "--window-size=1100,800",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("Chromium did not start its DevTools endpoint")
            await asyncio.sleep(0.1)
        port = port_file.read_text().split()[0]
        self.http = aiohttp.ClientSession()
        async with self.http.get(f"http://127.0.0.1:{port}/json/list") as r:
            pages = [t for t in await r.json() if t["type"] == "page"]
        self.ws = await self.http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=64 << 20)
        self._reader = asyncio.create_task(self._read())
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        await self.send("Network.enable")
        return self

    async def __aexit__(self, *exc):
        self._reader.cancel()
        await self.ws.close()
        await self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

    async def _read(self):
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self._waiting:
                self._waiting.pop(data["id"]).set_result(data)
            elif data.get("method") == "Network.requestWillBeSent":
                r = data["params"]["request"]
                self.requests.append({k: r.get(k) for k in ("url", "method", "headers", "postData")})
            elif data.get("method") == "Runtime.consoleAPICalled":
                self.console.append(
                    " ".join(str(a.get("value", a.get("description", ""))) for a in data["params"]["args"])
                )

    async def send(self, method: str, **params):
        i = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[i] = fut
        await self.ws.send_str(json.dumps({"id": i, "method": method, "params": params}))
        reply = await asyncio.wait_for(fut, 60)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def goto(self, url: str):
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'")

    async def js(self, expression: str):
        r = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(
                f"{expression[:80]}: {r['exceptionDetails'].get('text')} "
                f"{r['exceptionDetails'].get('exception', {}).get('description', '')}"
            )
        return r["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 60):
        """The expression's value once it is truthy; fails with the page's text after timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = await self.js(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                text = await self.js("document.body ? document.body.innerText.slice(0, 2000) : ''")
                raise AssertionError(f"timed out waiting for {expression!r}; the page shows:\n{text}")
            await asyncio.sleep(0.2)

    async def reload(self):
        """Load the page's current URL again, as a person pressing F5."""
        await self.goto(await self.js("location.href"))

    async def cookies(self) -> list[dict]:
        """The browser's cookies for the page, with their flags (httpOnly, sameSite, ...)."""
        return (await self.send("Network.getCookies"))["cookies"]

    async def allow_clipboard(self, origin: str):
        """Let the page write and read the clipboard, as a person who allowed it (headless asks no one)."""
        await self.send(
            "Browser.grantPermissions", permissions=["clipboardReadWrite", "clipboardSanitizedWrite"], origin=origin
        )
        await self.send("Emulation.setFocusEmulationEnabled", enabled=True)

    async def click(self, selector: str):
        await self.js(f"document.querySelector({json.dumps(selector)}).click()")

    async def type_and_enter(self, selector: str, text: str):
        """Focus the field, type the text as a person would (insertText), press Enter."""
        await self.js(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.send("Input.insertText", text=text)
        for kind in ("keyDown", "keyUp"):
            await self.send(
                "Input.dispatchKeyEvent",
                type=kind,
                key="Enter",
                code="Enter",
                windowsVirtualKeyCode=13,
                nativeVirtualKeyCode=13,
                **({"text": "\r"} if kind == "keyDown" else {}),
            )

    async def screenshot(self, path: Path):
        data = await self.send("Page.captureScreenshot", format="png")
        Path(path).write_bytes(base64.b64decode(data["data"]))


def run(coro):
    return asyncio.run(coro)
