"""The chat page in a real browser (headless Chromium), served by `python -m runner stages=[chat] chat.ui=true`.

Tests that need the answers' text under control (Markdown, HTML that must not run, an empty answer) put a small
OpenAI-speaking server on 127.0.0.1 (FakeEndpoint) where the endpoint would be; the rest talk to the trained
tiny model through the runner's own command line.
"""

import asyncio
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from runner import REPO_ROOT

from ..support import _endpoint as ep  # before promptflow: points its home at a temporary folder
from ..support.browser import Browser, chromium_path, run
from ..support.helpers import runner_started

pytestmark = pytest.mark.slow  # a browser, the page's process and an endpoint (real or a stand-in) each time

NESTED = b"[" * 100_000 + b"]" * 100_000  # json.loads gives up on it with RecursionError
HUNDRED_MB = 100 << 20


def first_url(proc, lines: list, marker: str, timeout: float, pick):
    """Read the process's output (kept in lines) until a line with marker; pick(line) is the URL, None if none came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            return None
        lines.append(line)
        if marker in line:
            return pick(line)
    return None


def start_page(root, *overrides, timeout: float = 120):
    """`python -m runner <overrides> chat.ui=true` started in root, as a person starts the page: (the process, the
    page's URL as printed, `http://127.0.0.1:PORT/?token=...`, or None, its output so far). split_url gives the
    base and the token an API client needs."""
    proc = runner_started(*overrides, "chat.ui=true", cwd=root)
    lines = []
    url = first_url(proc, lines, "chat page: http://", timeout, lambda line: line.split("chat page: ")[1].split()[0])
    return proc, url, lines


def split_url(url: str) -> tuple[str, str]:
    """The printed page URL -> (its base, `http://127.0.0.1:PORT/`, and the launch's token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/", parse_qs(parts.query)["token"][0]


def stop_page(proc, lines: list | None = None):
    """Ctrl-C, as a person stops the page; killed if it has not ended in 30 s. Its last output goes into lines."""
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=30)
        if lines is not None:
            lines.append(out)
    except subprocess.TimeoutExpired:
        proc.kill()


def conversation_js() -> str:
    """The page's conversation as it keeps it (localStorage), read in the browser."""
    return "JSON.parse(localStorage.getItem('phi3-chat-conversation')).messages"


async def ask(b: Browser, question: str, answers_before: int):
    """Type a question, press Enter, wait for its answer to be complete."""
    await b.type_and_enter("#input", question)
    await b.wait_for(f"document.querySelectorAll('.msg.assistant[data-done]').length === {answers_before + 1}")


async def two_turns(url: str, q1: str, q2: str, screenshot: Path | None = None) -> dict:
    """Open the page (its printed URL, token included), ask q1 then q2 as a person would (type, Enter, wait for the
    answer); what the page showed and kept, and what the browser sent."""
    async with Browser() as b:
        await b.goto(url)
        model = await b.wait_for("document.getElementById('model').textContent")
        where = await b.js("document.getElementById('header').innerText")
        for n, q in enumerate((q1, q2)):
            await ask(b, q, n)
        kept = await b.js(conversation_js())
        shown = await b.js("[...document.querySelectorAll('.msg.assistant')].map(e => e.innerText.trim())")
        stats = await b.js("[...document.querySelectorAll('.turn.assistant .stats')].map(e => e.textContent)")
        html = await b.js("document.documentElement.outerHTML")
        if screenshot:
            await b.screenshot(screenshot)
        return {
            "model": model,
            "where": where,
            "answers": [m["content"] for m in kept if m["role"] == "assistant"],
            "shown": shown,
            "stats": stats,
            "location": await b.js("location.href"),
            "cookies": await b.cookies(),
            "html": html,
            "requests": b.requests,
            "console": b.console,
        }


@pytest.fixture(scope="module")
def page(trained_run, tmp_path_factory):
    """The page for the session's model, deployed by the runner's own command line in a copy of the trained run:
    a dict of url (as printed, with the token), base, token, pid (the page's process), root, run_dir, lines (the
    runner's output so far)."""
    chromium_path()  # skip (or fail under CI=true) before deploying anything
    root = tmp_path_factory.mktemp("page")
    run_dir = root / "outputs" / "default" / "local_tiny_sample"
    run_dir.mkdir(parents=True)
    for f in ("manifest.json", "spec.yaml"):
        shutil.copy(trained_run[1] / f, run_dir / f)
    proc, url, lines = start_page(root, "stages=[register,deploy,chat]", timeout=240)
    try:
        assert url, "".join(lines)[-3000:]
        base, token = split_url(url)
        yield {
            "url": url,
            "base": base,
            "token": token,
            "pid": proc.pid,
            "root": root,
            "run_dir": run_dir,
            "lines": lines,
        }
    finally:
        stop_page(proc, lines)
        runner_cli(root, "stages=[teardown]")


def runner_cli(root, *overrides, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "runner", *overrides], cwd=root, env=env, capture_output=True, text=True, timeout=timeout
    )


def training_pairs(trained_run, n: int) -> list[tuple[str, str]]:
    rows = [
        r["messages"]
        for r in ep.training_rows(trained_run[2])
        if [m["role"] for m in r["messages"]][:2] == ["user", "assistant"]
    ]
    return [(r[0]["content"], r[1]["content"]) for r in rows[:n]]


def test_a_training_question_typed_into_the_page_gets_the_fine_tuned_answer(page, trained_run):
    """Through the printed URL: the token swapped for a cookie, the address bar left without it, two turns answered
    with the fine-tuned answers, the tokens and tokens/s of each shown."""
    url, base, run_dir = page["url"], page["base"], page["run_dir"]
    (q1, a1), (q2, _) = training_pairs(trained_run, 2)
    key = (run_dir / "secrets" / "endpoint.key").read_text().strip()

    shot = Path(os.environ.get("CHAT_PAGE_SCREENSHOT", run_dir / "chat-page.png"))
    seen = run(two_turns(url, q1, q2, shot))
    (first, second), requests, console = seen["answers"], seen["requests"], seen["console"]
    assert seen["model"].startswith("phi3-chat-tiny:") and "local endpoint http://127.0.0.1:" in seen["where"]
    assert first == a1 and seen["shown"][0]  # the fine-tuned answer, drawn
    assert seen["location"] == base  # the token left the address bar
    (cookie,) = [c for c in seen["cookies"] if c["name"].startswith("phi3-chat-")]
    assert cookie["value"] == page["token"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert all(
        s.split()[1] in ("token", "tokens") and int(s.split()[0]) >= 1 and s.endswith("tokens/s") for s in seen["stats"]
    ), seen["stats"]  # the endpoint's own count (usage), not an estimate (which starts with ≈)
    posts = [json.loads(r["postData"]) for r in requests if r["method"] == "POST"]
    # the second question went out with the conversation so far: the page carries it
    assert posts[-1]["messages"] == [
        {"role": "user", "content": q1},
        {"role": "assistant", "content": a1},
        {"role": "user", "content": q2},
    ]
    assert posts[-1]["stream"] is True and posts[-1]["stream_options"] == {"include_usage": True}
    status, again = ep.post(base + "v1/chat/completions", posts[-1] | {"stream": False}, page["token"])
    assert status == 200 and second == again["choices"][0]["message"]["content"]
    assert all(r["url"].startswith(base.rstrip("/")) for r in requests)  # nothing but its own server
    seen = seen["html"] + json.dumps(requests) + "\n".join(console)
    assert key not in seen  # the key never reaches the browser


def test_without_the_token_every_route_is_refused_and_the_token_url_sets_a_strict_cookie(page):
    base, token = page["base"], page["token"]
    with httpx.Client(base_url=base, timeout=30) as client:
        body = {"messages": [{"role": "user", "content": "hi"}]}
        for headers in ({}, {"Authorization": "Bearer " + token[::-1]}, {"Cookie": f"phi3-chat-x={token}"}):
            answers = [
                client.get("/", headers=headers),
                client.get("/static/chat.js", headers=headers),
                client.get("/v1/models", headers=headers),
                client.post("/v1/chat/completions", json=body, headers=headers),
                client.post("/v1/responses", json={"input": "hi"}, headers=headers),
            ]
            assert [a.status_code for a in answers] == [401] * 5, headers
            assert "open the URL" in answers[0].text and "token" in answers[0].text
            assert answers[2].json()["error"]["code"] == "invalid_api_key"
        wrong = client.get("/", params={"token": token[:-1]})
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers

        opened = client.get("/", params={"token": token})
        assert opened.status_code == 303 and opened.headers["location"] == "/"
        cookie = opened.headers["set-cookie"]
        assert (
            f"={token};" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie.replace("strict", "Strict")
        )
        assert client.get("/").status_code == 200  # the cookie, kept by the client, lets it in
        models = client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
        assert models.status_code == 200 and models.json()["data"][0]["id"].startswith("phi3-chat-tiny:")


def test_every_answer_says_no_framing_no_sniffing_and_scripts_from_this_server_only(page):
    base, token = page["base"], page["token"]
    with httpx.Client(base_url=base, timeout=30) as client:
        answers = [
            client.get("/", headers={"Authorization": f"Bearer {token}"}),
            client.get("/static/chat.js", headers={"Authorization": f"Bearer {token}"}),
            client.get("/v1/models"),  # refused: said with the same headers
            client.get("/", headers={"Host": "evil.example"}),  # refused by the Host check
            client.get("/", params={"token": token}),  # last: the client keeps the cookie it sets
        ]
    assert [a.status_code for a in answers] == [200, 200, 401, 403, 303]
    for a in answers:
        csp = a.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert a.headers["x-frame-options"] == "DENY" and a.headers["x-content-type-options"] == "nosniff"
    page_html = answers[0].text
    assert '<script type="module" src="/static/chat.js">' in page_html and "<script>" not in page_html
    assert "<style>" not in page_html  # styles come from a file too: no inline style needs allowing


def test_an_openai_client_given_the_token_as_its_key_chats_through_the_page_both_apis(page, trained_run):
    from openai import AuthenticationError, OpenAI

    (question, answer), _ = training_pairs(trained_run, 2)
    client = OpenAI(base_url=page["base"] + "v1", api_key=page["token"], max_retries=0)
    model = client.models.list().data[0].id
    messages = [{"role": "user", "content": question}]
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=128)
    assert reply.choices[0].message.content == answer
    chunks = list(
        client.chat.completions.create(
            model=model, messages=messages, max_tokens=128, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    said = client.responses.create(model=model, input=question, max_output_tokens=128)  # the Responses API too
    assert said.output_text == answer and said.usage.output_tokens == reply.usage.completion_tokens
    events = list(client.responses.create(model=model, input=question, max_output_tokens=128, stream=True))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == answer
    assert events[-1].type == "response.completed" and events[-1].response.output_text == answer
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=page["base"] + "v1", api_key="not-the-token", max_retries=0).models.list()


def test_bodies_that_are_not_one_json_object_are_answered_400(page):
    base, token = page["base"], page["token"]
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with httpx.Client(base_url=base, timeout=60) as client:
        for raw, said in (
            (NESTED, "nested too deeply"),
            (b'{"messages": [', "not valid JSON"),
            (b"[1, 2]", "must be a JSON object"),
            (b'"hi"', "must be a JSON object"),
            (b"", "send a JSON object"),
        ):
            for path in ("/v1/chat/completions", "/v1/responses"):
                r = client.post(path, content=raw, headers=auth)
                assert r.status_code == 400 and said in r.json()["error"]["message"], (path, raw[:20], r.text[:300])


def sent_until_answered(sock: socket.socket, chunk: bytes, most: int) -> tuple[int, bytes]:
    """Send chunk after chunk (up to most bytes) until the server answers; (bytes sent, what it answered)."""
    sent, answer = 0, b""
    sock.setblocking(False)
    while sent < most:
        readable, writable, _ = select.select([sock], [sock], [], 10)
        if readable:
            break
        if writable:
            try:
                sent += sock.send(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
    sock.setblocking(True)
    sock.settimeout(10)
    with contextlib.suppress(OSError):
        while b"\r\n\r\n" not in answer:
            part = sock.recv(65536)
            if not part:
                break
            answer += part
    return sent, answer


def test_a_100_mb_body_is_refused_413_without_the_page_reading_it(page):
    """Declared (Content-Length) or not (chunked), a body past the limit is refused as soon as that is known; the
    page's process holds none of it."""
    import psutil

    base, token = page["base"], page["token"]
    port = urlsplit(base).port
    proc = psutil.Process(page["pid"])
    before = proc.memory_info().rss
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:  # declared: answered before any body
        sock.sendall(f"{head}Content-Type: application/json\r\nContent-Length: {HUNDRED_MB}\r\n\r\n".encode())
        declared = sock.recv(65536)
    chunk = b"%x\r\n%s\r\n" % (1 << 16, b"x" * (1 << 16))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:  # chunked: counted as it comes
        sock.sendall(f"{head}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        sent, chunked = sent_until_answered(sock, chunk, HUNDRED_MB)
    grown = proc.memory_info().rss - before
    assert declared.startswith(b"HTTP/1.1 413"), declared[:200]
    assert chunked.startswith(b"HTTP/1.1 413"), chunked[:200]
    assert sent < 20 << 20, sent  # it stopped taking the body soon after the limit (1 MiB), not at 100 MB
    assert grown < 5 << 20, f"the page's process grew by {grown / 2**20:.1f} MiB"
    assert httpx.get(base + "v1/models", headers={"Authorization": f"Bearer {token}"}).status_code == 200  # still up


def test_a_stream_the_page_abandons_stops_the_endpoint_generating(page):
    """A tab closed mid-answer: the page server hangs up on the endpoint, which stops at the next token."""
    made = ep.abandoned(
        page["base"] + "v1/chat/completions", page["token"], page["run_dir"] / "deploy" / "server.log", 256
    )
    assert made < 100  # of 256


def test_prompt_flows_own_window_answers_with_the_runs_connection(page, trained_run, tmp_path):
    """`pf flow test --flow flow --ui`, as the seed's readers use it, with this project's pins (filelock < 3.21)."""
    name = next(line.split("connection ")[1].split()[0] for line in page["lines"] if "Prompt flow connection" in line)
    question, answer = ep.single_turn_pairs(trained_run[2], 1)[0]
    server_log = page["run_dir"] / "deploy" / "server.log"
    scored = server_log.read_text().count('"POST /score" 200')
    # the window keeps its conversation in <flow>/.promptflow/ux.inputs.json and starts from it: a copy starts empty
    flow = shutil.copytree(REPO_ROOT / "flow", tmp_path / "flow", ignore=shutil.ignore_patterns(".promptflow"))
    pf_cli = os.path.join(os.path.dirname(sys.executable), "pf")
    # the window runs the flow through Prompt flow's service, a long-lived process on 127.0.0.1:23333; one left
    # from another Prompt flow home would look connections up there: start from none
    subprocess.run([pf_cli, "service", "stop"], capture_output=True, timeout=60)
    proc = subprocess.Popen(
        [
            pf_cli,
            "flow",
            "test",
            "--flow",
            str(flow),
            "--ui",
            "--skip-open-browser",
            "--environment-variables",
            f"PHI3_CONNECTION={name}",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = []
    try:
        url = first_url(proc, lines, "Chat page URL", 120, lambda line: line.rsplit(": ", 1)[1].strip())
        assert url, "".join(lines)[-3000:]

        async def chat():
            async with Browser() as b:
                await b.goto(url)
                await b.wait_for("!!document.querySelector('[contenteditable]')", timeout=90)
                await b.type_and_enter("[contenteditable]", question)
                # an answer below the question: "View trace" under it, "Generating chat output" gone
                done = (
                    "document.body.innerText.includes('View trace') && "
                    "!document.body.innerText.includes('Generating chat output') && document.body.innerText"
                )
                return await b.wait_for(done, timeout=120)

        shown = run(chat())
        assert answer in shown.split(question, 1)[1], shown[-2000:]  # the fine-tuned answer
        # it came from this run's endpoint, found through the run's connection
        assert ep.count_lines(server_log, '"POST /score" 200', scored + 1) == scored + 1
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        subprocess.run([pf_cli, "service", "stop"], capture_output=True, timeout=60)


def test_an_open_page_says_its_endpoint_is_gone_and_follows_it_to_a_redeploy(page, trained_run):
    """teardown under an open page: its header says the endpoint is gone and how to bring it back; deploy (a new
    port, a new key): the header follows, and the next question is answered there. Last of the page's tests: the
    endpoint it leaves is the redeployed one."""
    root, run_dir = page["root"], page["run_dir"]
    (question, answer), _ = training_pairs(trained_run, 2)
    old = json.loads((run_dir / "manifest.json").read_text())["stages"]["deploy"]["outputs"]["openai_base_url"]
    where = "document.getElementById('where').textContent"

    async def through_a_redeploy():
        async with Browser() as b:
            await b.goto(page["url"])
            await b.wait_for(f"{where}.includes({json.dumps(old)})")
            down = runner_cli(root, "stages=[teardown]")
            assert down.returncode == 0, down.stderr[-2000:]
            await b.js("window.dispatchEvent(new Event('focus'))")  # as a person coming back to the tab
            gone = await b.wait_for(
                f"document.getElementById('header').classList.contains('gone') && {where}", timeout=30
            )
            up = runner_cli(root, "stages=[deploy]")
            assert up.returncode == 0, up.stderr[-2000:]
            new = json.loads((run_dir / "manifest.json").read_text())["stages"]["deploy"]["outputs"]
            # no focus this time: the page's own poll (every 10 s) notices
            await b.wait_for(f"{where}.includes({json.dumps(new['openai_base_url'])})", timeout=30)
            gone_now = await b.js("document.getElementById('header').classList.contains('gone')")
            await ask(b, question, 0)
            return gone, new["openai_base_url"], gone_now, await b.js(conversation_js())

    gone, new, gone_now, kept = run(through_a_redeploy())
    assert gone.startswith("endpoint gone:") and "stages=[deploy" in gone, gone
    assert new != old and not gone_now
    assert kept[-1] == {"role": "assistant", "content": answer, "done": True, "stats": kept[-1]["stats"]}


# ---- a stand-in endpoint: the answers' text under the test's control ----


class FakeEndpoint:
    """A real HTTP server on 127.0.0.1 speaking the endpoint's OpenAI routes (/v1/models, /v1/chat/completions
    streamed or not, /v1/responses) and Azure's /score, with the answers the test queues; it records every body
    it was sent, and wants its own key, as the endpoint does."""

    KEY = "fake-endpoint-key-" + "k" * 20

    def __init__(self, answers=(), model="fake-model:1"):
        self.answers, self.model, self.seen = list(answers), model, []
        self.server, self.thread = serve_in_thread(self.app())

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}/v1"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def app(self):
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, StreamingResponse
        from starlette.routing import Route

        async def keyed(request):
            if request.headers.get("authorization") != f"Bearer {self.KEY}":
                return JSONResponse({"error": {"message": "wrong key"}}, 401)
            if request.method == "POST":
                self.seen.append({"path": request.url.path, "body": json.loads(await request.body())})
            return None

        async def models(request):
            return await keyed(request) or JSONResponse({"object": "list", "data": [{"id": self.model}]})

        async def chat(request):
            refused = await keyed(request)
            if refused:
                return refused
            body, text = self.seen[-1]["body"], self.answers.pop(0)
            if not body.get("stream"):
                return JSONResponse({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})
            return StreamingResponse(chat_events(text, self.model), media_type="text/event-stream")

        async def responses(request):
            refused = await keyed(request)
            if refused:
                return refused
            if self.seen[-1]["body"].get("stream"):
                return StreamingResponse(response_events(), media_type="text/event-stream")
            return JSONResponse({"id": "resp_1", "object": "response", "output_text": "from /v1/responses"})

        async def score(request):  # Azure ML's contract: a list of answers, no streaming, no token counts
            return await keyed(request) or JSONResponse([self.answers.pop(0)])

        routes = [
            Route("/score", score, methods=["POST"]),
            Route("/v1/models", models),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/responses", responses, methods=["POST"]),
        ]
        return Starlette(routes=routes)


def sse(obj) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()


async def chat_events(text: str, model: str):
    """The answer as the endpoint streams it: a role chunk, a piece per word, the finish, the usage, [DONE]."""
    pieces = [w for w in text.split(" ")] if text else []
    pieces = [p + " " for p in pieces[:-1]] + pieces[-1:]
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model}
    yield sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    for p in pieces:
        await asyncio.sleep(0.01)
        yield sse({**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]})
    yield sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    usage = {"prompt_tokens": 5, "completion_tokens": len(pieces) * 2, "total_tokens": 5 + len(pieces) * 2}
    yield sse({**base, "choices": [], "usage": usage})
    yield sse("[DONE]")


RESPONSE_EVENTS = [
    {"type": "response.created", "sequence_number": 0},
    {"type": "response.output_text.delta", "delta": "from ", "sequence_number": 1},
    {"type": "response.output_text.delta", "delta": "/v1/responses", "sequence_number": 2},
    {"type": "response.completed", "sequence_number": 3},
]


async def response_events():
    for event in RESPONSE_EVENTS:
        await asyncio.sleep(0.01)
        yield f"event: {event['type']}\n".encode() + sse(event)


def serve_in_thread(app):
    """uvicorn serving app on a free 127.0.0.1 port in a thread; (the server, the thread) once it listens."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    return server, thread


@contextlib.contextmanager
def page_over(resolve, token: str, printed: list | None = None):
    """The chat page (serving.chat_page.make_app) on a free 127.0.0.1 port over resolve(); yields its base URL."""
    from serving import chat_page

    server, thread = serve_in_thread(chat_page.make_app(resolve, (printed or []).append, token=token))
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def upstream_of(fake: FakeEndpoint, kind: str = "openai"):
    from serving.chat_page import Upstream

    url = fake.base if kind == "openai" else fake.base.removesuffix("/v1") + "/score"
    return Upstream(kind, url, fake.KEY, fake.model, 64, f"fake endpoint {url}", run_name="default/fake_run")


@pytest.fixture
def fake():
    endpoint = FakeEndpoint()
    yield endpoint
    endpoint.stop()


MARKDOWN_WITH_TRAPS = """Here is the code:

```python
print("hi")
```

<img src=x onerror="window.__pwned = 'img'">

Inline <img src=y onerror="window.__pwned = 'inline img'"> too.

[click me](javascript:window.__pwned='link') and <a href="javascript:window.__pwned='a'">this</a>

<script>window.__pwned = 'script'</script>

<p onclick="window.__pwned='p'">a paragraph</p>

Some **bold**, and [a real link](https://example.com/docs).
"""


def test_an_answer_is_markdown_with_a_copy_button_and_none_of_its_html_runs(fake):
    chromium_path()
    fake.answers.append(MARKDOWN_WITH_TRAPS)
    token = "t" * 43

    async def look():
        async with Browser() as b:
            with page_over(lambda: upstream_of(fake), token) as base:
                await b.goto(base + "?token=" + token)
                await b.allow_clipboard(base.rstrip("/"))
                await ask(b, "show me", 0)
                await b.js("document.querySelectorAll('#log a:not([href^=http])').forEach(a => a.click())")
                await b.click(".msg.assistant pre button.copy")
                await b.wait_for("document.querySelector('button.copy').textContent === 'Copied'")
                return await b.js(
                    """(async () => ({
                    pwned: window.__pwned === undefined ? null : String(window.__pwned),
                    live: document.querySelectorAll('#log img, #log script, #log [onclick], #log [onerror]').length,
                    hrefs: [...document.querySelectorAll('#log a')].map(a => a.getAttribute('href')),
                    text: document.querySelector('.msg.assistant').innerText,
                    code: document.querySelector('.msg.assistant pre code.language-python')?.textContent,
                    bold: document.querySelectorAll('.msg.assistant strong').length,
                    clipboard: await navigator.clipboard.readText(),
                }))()"""
                )

    seen = run(look())
    assert seen["pwned"] is None and seen["live"] == 0
    assert all(h is None or not h.lower().startswith("javascript") for h in seen["hrefs"]), seen["hrefs"]
    assert "https://example.com/docs" in seen["hrefs"] and len(seen["hrefs"]) == 2  # the javascript: one defused
    assert "<img src=x" in seen["text"] and "<script>" in seen["text"]  # shown as text, never as HTML
    assert seen["code"] == 'print("hi")\n' and seen["clipboard"].strip() == 'print("hi")'
    assert seen["bold"] >= 1  # Markdown is drawn


def test_regenerate_edit_and_resend_reload_new_chat_system_prompt_and_an_empty_answer(fake):
    chromium_path()
    fake.answers += ["answer one", "answer two", "answer three", "answer four", ""]
    token = "u" * 43
    text_of = "[...document.querySelectorAll('.msg')].map(e => e.innerText.trim())"

    async def use_it():
        async with Browser() as b:
            with page_over(lambda: upstream_of(fake), token) as base:
                await b.goto(base + "?token=" + token)
                header = await b.wait_for(
                    "document.getElementById('model').textContent && document.getElementById('header').innerText"
                )
                await b.js("document.getElementById('system').value = 'Answer briefly.'")
                await b.js("document.getElementById('system').dispatchEvent(new Event('input'))")
                await ask(b, "first question", 0)
                stats = await b.js("document.querySelector('.turn.assistant .stats').textContent")
                await b.click(".regenerate")
                await b.wait_for(
                    "document.querySelector('.msg.assistant[data-done]')?.innerText.trim() === 'answer two'"
                )
                await ask(b, "second question", 1)
                await b.click(".turn.user .edit")  # the first question
                await b.js("document.querySelector('.edit textarea').value = 'first question, edited'")
                await b.click(".edit .resend")
                await b.wait_for(
                    "document.querySelectorAll('.msg').length === 2 && "
                    "document.querySelectorAll('.msg.assistant[data-done]').length === 1"
                )
                edited = await b.js(text_of)
                await b.reload()
                await b.wait_for("document.querySelectorAll('.msg.assistant[data-done]').length === 1")
                reloaded = await b.js(text_of)
                system_kept = await b.js("document.getElementById('system').value")
                await ask(b, "say nothing", 1)
                empty = await b.js("document.querySelectorAll('.msg.assistant')[1].innerText.trim()")
                await b.click("#new")
                await b.reload()
                cleared = await b.js("document.querySelectorAll('.msg').length")
                return header, stats, edited, reloaded, system_kept, empty, cleared

    header, stats, edited, reloaded, system_kept, empty, cleared = run(use_it())
    sent = [s["body"]["messages"] for s in fake.seen if s["path"] == "/v1/chat/completions"]
    system = {"role": "system", "content": "Answer briefly."}
    assert "default/fake_run" in header and "fake-model:1" in header and "fake endpoint" in header
    assert sent[0] == [system, {"role": "user", "content": "first question"}]
    assert sent[1] == sent[0]  # regenerated: the same conversation, the old answer left out
    assert sent[2] == [
        *sent[0],
        {"role": "assistant", "content": "answer two"},
        {"role": "user", "content": "second question"},
    ]
    assert sent[3] == [system, {"role": "user", "content": "first question, edited"}]  # what came after dropped
    assert edited == reloaded == ["first question, edited", "answer four"]
    assert system_kept == "Answer briefly."
    assert empty == "(empty answer)"
    assert cleared == 0
    # "answer one" came in 2 pieces, for which the stand-in's usage says 4 tokens: the page shows the endpoint's count
    assert stats.startswith("4 tokens · ") and stats.endswith(" tokens/s"), stats


def test_the_responses_api_is_passed_through_with_the_endpoints_key(fake):
    from serving.chat_page import proxy

    token = "r" * 43
    auth = {"Authorization": f"Bearer {token}"}
    body = {"model": "fake-model:1", "input": "hi", "stream": False}
    with page_over(lambda: upstream_of(fake), token) as base, httpx.Client(base_url=base, timeout=30) as client:
        whole = client.post("/v1/responses", json=body, headers=auth)
        with client.stream("POST", "/v1/responses", json=body | {"stream": True}, headers=auth) as streamed:
            events = [json.loads(line[6:]) for line in streamed.iter_lines() if line.startswith("data: ")]
            media = streamed.headers["content-type"]
        nested = client.post("/v1/responses", content=NESTED, headers=auth)
        big = client.post("/v1/responses", content=b" " * (proxy.MAX_BODY_BYTES + 1), headers=auth)
        refused = client.post("/v1/responses", json=body)
    assert whole.status_code == 200 and whole.json()["output_text"] == "from /v1/responses"
    assert media.startswith("text/event-stream") and events == RESPONSE_EVENTS
    assert [s["body"] for s in fake.seen] == [body, body | {"stream": True}]  # only these reached the endpoint
    assert nested.status_code == 400 and big.status_code == 413 and refused.status_code == 401

    # a /score-only endpoint (Azure's inference server): the page checks the request, asks /score, says a Response
    from openai.types.responses import Response, ResponseStreamEvent
    from pydantic import TypeAdapter

    fake.answers += ["scored once", "scored twice"]
    instructed = body | {"instructions": "Be brief."}
    with page_over(lambda: upstream_of(fake, "score"), token) as base, httpx.Client(base_url=base, timeout=30) as c:
        whole = c.post("/v1/responses", json=instructed, headers=auth)
        with c.stream("POST", "/v1/responses", json=body | {"stream": True}, headers=auth) as streamed:
            events = [json.loads(line[6:]) for line in streamed.iter_lines() if line.startswith("data: ")]
        too_long = c.post("/v1/responses", json=body | {"max_output_tokens": 65}, headers=auth)
    assert whole.status_code == 200 and Response.model_validate(whole.json()).output_text == "scored once"
    scored = [s["body"] for s in fake.seen[2:]]
    assert scored[0]["input_data"][0][0] == {"role": "system", "content": "Be brief."}  # instructions first
    parsed = [TypeAdapter(ResponseStreamEvent).validate_python(e) for e in events]
    assert parsed[-1].type == "response.completed" and parsed[-1].response.output_text == "scored twice"
    assert too_long.status_code == 400 and "max_output_tokens" in too_long.json()["error"]["message"]
    assert len(fake.seen) == 4  # the refused one never reached the endpoint


def test_the_page_chats_with_an_azure_endpoint_and_the_browser_never_sees_its_key(
    trained_run, compose_spec, tmp_path, monkeypatch
):
    """compute=a100: deploy against the recording Azure stand-in, then the page finds the endpoint's scoring URI
    and key from Azure as the runner does; the URI's host stands for a local server speaking /score (Azure's
    contract, no streaming) that accepts only that key."""
    import dataclasses

    from runner.app import write_spec
    from runner.azure import deploy as az_deploy
    from runner.azure import retry
    from runner.context import Context
    from runner.manifest import Manifest
    from runner.spec import azure_env_paths
    from runner.stages import chat

    from ..support.azure_standin import AZURE, KEY, FakeML

    chromium_path()
    spec = compose_spec("compute=a100", "model=phi35", "data=1pct")
    spec["azure"] = dict(AZURE)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_spec(spec, run_dir, azure_env_paths())
    fake = FakeML()
    monkeypatch.setattr(az_deploy, "client", lambda spec: fake)
    monkeypatch.setattr(retry, "_sleep", lambda s: None)
    ctx = Context(run_dir, Manifest(run_dir), log=lambda *_: None, stage="deploy")
    ctx.manifest.record("register", "done", "h", {"model_name": "phi3-chat-phi35", "model_version": "3"})
    ctx.manifest.record("deploy", "done", "h", az_deploy.run(spec, ctx))

    azure = chat.upstream(spec, run_dir)  # what the page is given: Azure's scoring URI and key, /score only
    assert azure.kind == "score" and azure.key == KEY and azure.model == "phi3-chat-phi35:3"
    assert azure.url.startswith("https://") and azure.url.endswith(".inference.ml.azure.com/score")
    local = ep.Server(
        trained_run[2]["stages"]["train"]["outputs"]["mlflow_model_dir"],
        tmp_path / "endpoint",
        limit=spec["deploy"]["max_new_tokens_limit"],
        key=KEY,
    )
    resolved = []

    def resolve():
        up = chat.upstream(spec, run_dir)
        resolved.append(up.url)
        return dataclasses.replace(up, url=local.url)  # the one thing the stand-in cannot give: a reachable host

    printed, token = [], "a" * 43
    try:
        (q1, a1), (q2, _) = ep.single_turn_pairs(trained_run[2], 2)
        with page_over(resolve, token, printed) as url:
            seen = run(two_turns(url + "?token=" + token, q1, q2))
        where, first, html = seen["where"], seen["answers"][0], seen["html"]
        requests, console = seen["requests"], seen["console"]
    finally:
        local.stop()
    assert "inference.ml.azure.com (/score)" in where and "phi3-chat-phi35:3" in where
    assert first == a1  # the fine-tuned answer, through Azure's contract
    assert seen["stats"][0].startswith("≈")  # /score gives no token count: the page says its figure is an estimate
    assert resolved and set(resolved) == {azure.url}
    posts = [json.loads(r["postData"]) for r in requests if r["method"] == "POST"]
    assert [m["content"] for m in posts[-1]["messages"]] == [q1, a1, q2]  # the conversation carried
    assert all(r["url"].startswith(url.rstrip("/")) for r in requests)  # the browser talks to its own server only
    assert ep.count_lines(local.log, '"POST /score" 200', 2) == 2  # both turns reached the endpoint with its key
    seen = html + json.dumps(requests) + "\n".join(console) + "\n".join(map(str, printed))
    assert KEY not in seen and KEY[::-1] not in seen


def test_an_endpoint_gone_while_the_page_is_open_is_said_on_the_page_not_a_crash():
    """The endpoint was torn down under an open page: looking it up again fails, and the page says why (502), on
    the chat route and on /v1/models, which the open page polls."""
    from starlette.testclient import TestClient

    from runner.errors import StageFailed
    from serving import chat_page

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    calls = []

    def resolve():
        calls.append(1)
        if len(calls) > 1:
            raise StageFailed("no local endpoint is running for this run: python -m runner stages=[deploy]")
        return chat_page.Upstream("openai", f"http://127.0.0.1:{port}/v1", "k" * 20, "m:1", 64, "local")

    printed, token = [], "g" * 43
    auth = {"Authorization": f"Bearer {token}"}
    app = chat_page.make_app(resolve, printed.append, token=token)
    with TestClient(app, base_url=f"http://127.0.0.1:{port}") as client:
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}, headers=auth)
        models = client.get("/v1/models", headers=auth)
    assert r.status_code == 502 and "cannot reach the endpoint" in r.json()["error"]["message"]
    said = models.json()["error"]["message"]
    assert models.status_code == 502 and "stages=[deploy]" in said and "looking it up again" in said
    assert len(calls) == 3 and any("stages=[deploy]" in line for line in printed)
