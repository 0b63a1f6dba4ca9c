"""The commands a run prints for a person, pasted as printed: `./dev run run.name=newbie ...` from the repository
root, then each line of its "what next" block run in a shell, in turn, with no virtualenv activated. Each must
reach the same run directory (newbie's endpoint, not another), and after teardown the messages must say how to
bring the endpoint back, by a command that does."""

import contextlib
import json
import os
import shlex
import signal
import subprocess
import threading
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from runner import REPO_ROOT

from ..support import _endpoint as ep  # before promptflow: points its home at a temporary folder

pytestmark = pytest.mark.slow
NAME = "newbie"


def shell(command: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """command run by bash in the repository root, with PATH and no venv: as a person pastes it."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    return subprocess.run(
        ["bash", "-c", command], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def what_next(stdout: str) -> dict:
    """The closing block's lines, by label: {"chat page": command, "stop it": command, ...}."""
    block = stdout.split("what next", 1)[1].splitlines()[1:]
    out = {}
    for line in block:
        if not line.startswith("  ") or ":" not in line:
            break
        label, rest = line.strip().split(":", 1)
        out[label] = rest.strip()
    return out


def deploy_outputs(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())["stages"]["deploy"]


@pytest.fixture(scope="module")
def newbie(trained_run, tmp_path_factory):
    """The session's trained model copied into <tmp>/out/newbie/..., then `./dev run ... register,deploy,chat`
    as printed in the README (run.output_root points the test's runs outside the repository)."""
    root = tmp_path_factory.mktemp("printed") / "out"
    run_dir = root / NAME / "local_tiny_sample"
    run_dir.mkdir(parents=True)
    for f in ("manifest.json", "spec.yaml"):
        (run_dir / f).write_bytes((trained_run[1] / f).read_bytes())
    first = f"./dev run run.output_root={shlex.quote(str(root))} run.name={NAME} 'stages=[register,deploy,chat]'"
    r = shell(first)
    try:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        yield run_dir, r.stdout
    finally:
        shell(f"./dev run run.output_root={shlex.quote(str(root))} run.name={NAME} 'stages=[teardown]'")


def test_the_closing_block_says_what_runs_how_to_chat_and_how_to_stop(newbie):
    run_dir, stdout = newbie
    block, out = what_next(stdout), deploy_outputs(run_dir)["outputs"]
    assert out["url"] in block["endpoint"] and str(out["pid"]) in block["endpoint"]
    assert out["openai_base_url"] in block["OpenAI API"] and out["key_file"] in block["OpenAI API"]
    for label in ("chat page", "Prompt flow", "stop it"):
        assert block[label].startswith("./dev "), block  # no venv to activate
    assert f"run.name={NAME}" in block["chat page"] and f"run.name={NAME}" in block["stop it"]


def test_the_printed_prompt_flow_command_asks_this_runs_model(newbie, trained_run):
    run_dir, stdout = newbie
    question, answer = ep.single_turn_pairs(trained_run[2], 1)[0]
    command = what_next(stdout)["Prompt flow"].replace('question="..."', f"question={shlex.quote(question)}")
    log = deploy_outputs(run_dir)["outputs"]["log_file"]
    before = ep.count_lines(log, '"POST /score" 200')
    r = shell(command)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert answer in r.stdout
    assert ep.count_lines(log, '"POST /score" 200', at_least=before + 1) == before + 1  # newbie's endpoint answered


def test_the_printed_chat_page_command_serves_this_runs_endpoint(newbie):
    run_dir, stdout = newbie
    proc = subprocess.Popen(
        ["bash", "-c", what_next(stdout)["chat page"]],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    watchdog = threading.Timer(120, os.killpg, (proc.pid, signal.SIGKILL))  # a page that never prints: EOF, not a hang
    watchdog.start()
    try:
        url = None
        while url is None:
            line = proc.stdout.readline()
            assert line, "the page ended (or printed nothing in 120 s) before printing its URL"
            if "chat page: http" in line:
                url = line.split("chat page: ", 1)[1].split()[0]
        assert url, "no URL printed"
        token = parse_qs(urlsplit(url).query).get("token", [None])[0]
        base = url.split("?", 1)[0].rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with urllib.request.urlopen(urllib.request.Request(f"{base}/v1/models", headers=headers), timeout=30) as r:
            models = json.load(r)
        assert deploy_outputs(run_dir)["outputs"]["openai_base_url"] in json.dumps(models)
    finally:
        watchdog.cancel()
        with contextlib.suppress(ProcessLookupError):  # Ctrl-C, as a person stops the page
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_after_the_printed_teardown_every_message_says_how_to_bring_it_back_and_that_command_does(newbie):
    run_dir, stdout = newbie
    block = what_next(stdout)
    pid = deploy_outputs(run_dir)["outputs"]["pid"]

    r = shell(block["stop it"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"stopped the local endpoint (pid {pid})" in r.stdout
    assert deploy_outputs(run_dir)["status"] == "stopped"
    back = r.stdout.split("to bring it back (and chat):", 1)[1].strip().splitlines()[0]
    assert f"run.name={NAME}" in back and "stages=[deploy,chat]" in back

    r = shell(block["chat page"], timeout=120)  # the page of a torn-down endpoint: said, with the way back
    assert r.returncode == 2 and "torn down" in r.stderr and back in r.stderr, r.stderr[-2000:]
    assert "has not finished" not in r.stderr

    r = shell(back)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    again = deploy_outputs(run_dir)
    assert again["status"] == "done" and again["outputs"]["pid"] != pid
    with urllib.request.urlopen(again["outputs"]["health_url"], timeout=10) as health:
        assert health.status == 200
    assert "[chat] A: " in r.stdout  # and it chatted through this run's connection
