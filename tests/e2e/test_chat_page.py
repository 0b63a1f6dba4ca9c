"""The chat page in a real browser (headless Chromium), served by `python -m runner stages=[chat] chat.ui=true`."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner import REPO_ROOT

from ..support import _endpoint as ep  # before promptflow: points its home at a temporary folder
from ..support.browser import Browser, chromium_path, run


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
    page's URL as printed or None, its output so far)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", *overrides, "chat.ui=true"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    url = first_url(proc, lines, "chat page: http://", timeout, lambda line: line.split("chat page: ")[1].split()[0])
    return proc, url, lines


def stop_page(proc, lines: list | None = None):
    """Ctrl-C, as a person stops the page; killed if it has not ended in 30 s. Its last output goes into lines."""
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=30)
        if lines is not None:
            lines.append(out)
    except subprocess.TimeoutExpired:
        proc.kill()


async def two_turns(url: str, q1: str, q2: str, screenshot: Path | None = None) -> dict:
    """Open the page, ask q1 then q2 as a person would (type, Enter, wait for the answer); what the page showed
    and what the browser sent."""
    async with Browser() as b:
        await b.goto(url)
        where = await b.wait_for(
            "document.getElementById('where').textContent.includes(':') && document.getElementById('where').textContent"
        )
        answers = []
        for n, q in enumerate((q1, q2), 1):
            await b.type_and_enter("#input", q)
            await b.wait_for(f"document.querySelectorAll('.msg.assistant[data-done]').length === {n}")
            answers.append(await b.js(f"document.querySelectorAll('.msg.assistant')[{n - 1}].textContent"))
        html = await b.js("document.documentElement.outerHTML")
        if screenshot:
            await b.screenshot(screenshot)
        return {"where": where, "answers": answers, "html": html, "requests": b.requests, "console": b.console}


@pytest.fixture(scope="module")
def page(trained_run, tmp_path_factory):
    """(URL of the page, run dir, the runner's output so far as a list) for the session's model, deployed by the
    runner's own command line in a copy of the trained run."""
    chromium_path()  # skip (or fail under CI=true) before deploying anything
    root = tmp_path_factory.mktemp("page")
    run_dir = root / "outputs" / "default" / "local_tiny_sample"
    run_dir.mkdir(parents=True)
    for f in ("manifest.json", "spec.yaml"):
        shutil.copy(trained_run[1] / f, run_dir / f)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    proc, url, lines = start_page(root, "stages=[register,deploy,chat]", timeout=240)
    try:
        assert url, "".join(lines)[-3000:]
        yield url, run_dir, lines
    finally:
        stop_page(proc, lines)
        subprocess.run(
            [sys.executable, "-m", "runner", "stages=[teardown]"], cwd=root, env=env, capture_output=True, timeout=120
        )


def test_a_training_question_typed_into_the_page_gets_the_fine_tuned_answer(page, trained_run):
    url, run_dir, lines = page
    rows = [
        r["messages"]
        for r in ep.training_rows(trained_run[2])
        if [m["role"] for m in r["messages"]][:2] == ["user", "assistant"]
    ]
    (q1, a1), (q2, a2) = [(r[0]["content"], r[1]["content"]) for r in rows[:2]]
    key = (run_dir / "secrets" / "endpoint.key").read_text().strip()

    shot = Path(os.environ.get("CHAT_PAGE_SCREENSHOT", run_dir / "chat-page.png"))
    seen = run(two_turns(url, q1, q2, shot))
    where, (first, second), html = seen["where"], seen["answers"], seen["html"]
    requests, console = seen["requests"], seen["console"]
    assert "phi3-chat-tiny:" in where and first == a1
    posts = [json.loads(r["postData"]) for r in requests if r["method"] == "POST"]
    # the second question went out with the conversation so far: the page carries it
    assert (
        posts[-1]["messages"]
        == [{"role": "user", "content": q1}, {"role": "assistant", "content": a1}, {"role": "user", "content": q2}]
        and posts[-1]["stream"] is True
    )
    assert (
        second
        == ep.post(url + "v1/chat/completions", posts[-1] | {"stream": False}, None)[1]["choices"][0]["message"][
            "content"
        ]
    )
    assert all(r["url"].startswith(url.rstrip("/")) for r in requests)  # nothing but its own server
    seen = html + json.dumps(requests) + "\n".join(console) + "".join(lines)
    assert key not in seen  # the key never reaches the browser, nor the page server's output


def test_prompt_flows_own_window_answers_with_the_runs_connection(page, trained_run, tmp_path):
    """`pf flow test --flow flow --ui`, as the seed's readers use it, with this project's pins (filelock < 3.21)."""
    name = next(line.split("connection ")[1].split()[0] for line in page[2] if "Prompt flow connection" in line)
    question, answer = ep.single_turn_pairs(trained_run[2], 1)[0]
    server_log = page[1] / "deploy" / "server.log"
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


def test_the_page_chats_with_an_azure_endpoint_and_the_browser_never_sees_its_key(
    trained_run, compose_spec, tmp_path, monkeypatch
):
    """compute=a100: deploy against the recording Azure stand-in, then the page finds the endpoint's scoring URI
    and key from Azure as the runner does; the URI's host stands for a local server speaking /score (Azure's
    contract, no streaming) that accepts only that key."""
    import dataclasses
    import threading

    import uvicorn

    from runner.app import write_spec
    from runner.azure import deploy as az_deploy
    from runner.azure import retry
    from runner.context import Context
    from runner.manifest import Manifest
    from runner.spec import azure_env_paths
    from runner.stages import chat
    from serving import chat_page

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

    printed = []
    server = uvicorn.Server(
        uvicorn.Config(chat_page.make_app(resolve, printed.append), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/"
        (q1, a1), (q2, _) = ep.single_turn_pairs(trained_run[2], 2)

        seen = run(two_turns(url, q1, q2))
        where, first, html = seen["where"], seen["answers"][0], seen["html"]
        requests, console = seen["requests"], seen["console"]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        local.stop()
    assert "inference.ml.azure.com (/score)" in where and "phi3-chat-phi35:3" in where
    assert first == a1  # the fine-tuned answer, through Azure's contract
    assert resolved and set(resolved) == {azure.url}
    posts = [json.loads(r["postData"]) for r in requests if r["method"] == "POST"]
    assert [m["content"] for m in posts[-1]["messages"]] == [q1, a1, q2]  # the conversation carried
    assert all(r["url"].startswith(url.rstrip("/")) for r in requests)  # the browser talks to its own server only
    assert ep.count_lines(local.log, '"POST /score" 200', 2) == 2  # both turns reached the endpoint with its key
    seen = html + json.dumps(requests) + "\n".join(console) + "\n".join(map(str, printed))
    assert KEY not in seen and KEY[::-1] not in seen


def test_a_stream_the_page_abandons_stops_the_endpoint_generating(page):
    """A tab closed mid-answer: the page server hangs up on the endpoint, which stops at the next token."""
    url, run_dir = page[0], page[1]
    made = ep.abandoned(url + "v1/chat/completions", None, run_dir / "deploy" / "server.log", 256)
    assert made < 100  # of 256


def test_an_endpoint_gone_while_the_page_is_open_is_said_on_the_page_not_a_crash():
    """The endpoint was torn down under an open page: looking it up again fails, and the page says why (502)."""
    import socket

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

    printed = []
    with TestClient(chat_page.make_app(resolve, printed.append), base_url=f"http://127.0.0.1:{port}") as client:
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 502 and "cannot reach the endpoint" in r.json()["error"]["message"]
    assert len(calls) == 2 and any("stages=[deploy]" in line for line in printed)
