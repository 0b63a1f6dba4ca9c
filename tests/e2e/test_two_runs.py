"""Two runs deployed at once on one machine, each with its own endpoint: each run's chat stage, `pf flow test`
with its connection, and its chat page reach that run's model and never the other's."""

import json
import os
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from runner import REPO_ROOT

from ..support import _endpoint as ep  # before promptflow: points its home at a temporary folder
from ..support.helpers import runner_cli
from .test_chat_page import split_url, start_page, stop_page

pytestmark = pytest.mark.slow
RUNS = ("alpha", "beta")


def served(run_dir: Path, route: str = "POST /score", at_least: int = 0) -> int:
    """Requests on route that the run's endpoint answered so far (waiting for at least at_least), from its log."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return ep.count_lines(manifest["stages"]["deploy"]["outputs"]["log_file"], f'"{route}" 200', at_least)


def scored(run_dir: Path, at_least: int = 0) -> int:
    return served(run_dir, at_least=at_least)


def completions(run_dir: Path, at_least: int = 0) -> int:
    return served(run_dir, "POST /v1/chat/completions", at_least)


@pytest.fixture(scope="module")
def two(trained_run, tmp_path_factory):
    """{run name: (run dir, the chat stage's output)} for two runs of the session's model, both deployed."""
    root = tmp_path_factory.mktemp("two")
    dirs = {}
    for name in RUNS:
        run_dir = root / "outputs" / name / "local_tiny_sample"
        run_dir.mkdir(parents=True)
        for f in ("manifest.json", "spec.yaml"):
            shutil.copy(trained_run[1] / f, run_dir / f)
        dirs[name] = run_dir
    try:
        out = {}
        for name in RUNS:
            r = runner_cli(
                f"run.name={name}", f"register.model_name=phi3-chat-{name}", "stages=[register,deploy,chat]", cwd=root
            )
            assert r.returncode == 0 and "[chat] A: " in r.stdout, r.stderr[-3000:]
            out[name] = (dirs[name], r.stdout)
        yield root, out
    finally:
        for name in RUNS:
            runner_cli(f"run.name={name}", f"register.model_name=phi3-chat-{name}", "stages=[teardown]", cwd=root)


def test_each_runs_chat_stage_used_its_own_endpoint(two):
    root, out = two
    (a_dir, a_out), (b_dir, b_out) = out["alpha"], out["beta"]
    questions = a_out.count("[chat] Q: ")
    assert questions and b_out.count("[chat] Q: ") == questions
    # alpha chatted before beta was deployed; beta's chat stage added nothing to alpha's endpoint
    assert scored(a_dir, questions) == scored(b_dir, questions) == questions
    names = [
        line.split("connection ")[1].split()[0]
        for o in (a_out, b_out)
        for line in o.splitlines()
        if "Prompt flow connection" in line
    ]
    assert len(set(names)) == 2 and "alpha" in names[0] and "beta" in names[1]


def test_pf_flow_test_with_each_connection_reaches_its_own_endpoint(two, trained_run):
    """The command each run's chat stage printed, pasted as printed (the question filled in) into a shell at the
    repository root with no virtualenv activated, reaches that run's endpoint and no other."""
    root, out = two
    question, answer = ep.single_turn_pairs(trained_run[2], 1)[0]
    venv_bin = os.path.dirname(sys.executable)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"} | {"PATH": path}
    for name in RUNS:
        run_dir, stdout = out[name]
        other = out[RUNS[1 - RUNS.index(name)]][0]
        printed = next(line.split("[chat]   ", 1)[1] for line in stdout.splitlines() if "--inputs connection=" in line)
        assert printed.split()[:2] == [str(REPO_ROOT / "dev"), "pf"], printed  # ./dev pf by path: no venv needed
        before, other_before = scored(run_dir), scored(other)
        r = subprocess.run(
            ["bash", "-c", printed.replace('question="..."', f"question={shlex.quote(question)}")],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert answer in r.stdout
        assert scored(run_dir, before + 1) == before + 1 and scored(other) == other_before


def test_each_runs_chat_page_talks_to_its_own_model(two, trained_run):
    root, out = two
    question, answer = ep.single_turn_pairs(trained_run[2], 1)[0]
    pages = {}
    try:
        for name in RUNS:  # both pages open at once
            proc, url, lines = start_page(
                root, f"run.name={name}", f"register.model_name=phi3-chat-{name}", "stages=[chat]"
            )
            pages[name] = (proc, url)
            assert url, "".join(lines)[-3000:]
        for name in RUNS:
            proc, url = pages[name]
            base, token = split_url(url)
            run_dir, other = out[name][0], out[RUNS[1 - RUNS.index(name)]][0]
            listed = urllib.request.Request(base + "v1/models", headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(listed, timeout=30) as resp:
                models = [m["id"] for m in json.loads(resp.read())["data"]]
            assert models == [f"phi3-chat-{name}:1"]
            before, other_before = completions(run_dir), completions(other)
            status, body = ep.post(
                base + "v1/chat/completions", {"messages": [{"role": "user", "content": question}]}, token
            )
            assert status == 200 and body["choices"][0]["message"]["content"] == answer
            assert body["model"] == f"phi3-chat-{name}:1"
            assert completions(run_dir, before + 1) == before + 1 and completions(other) == other_before
    finally:
        for proc, _ in pages.values():
            stop_page(proc)


def test_tearing_one_run_down_leaves_the_other_answering(two):
    root, out = two
    down = runner_cli("run.name=alpha", "register.model_name=phi3-chat-alpha", "stages=[teardown]", cwd=root)
    assert down.returncode == 0, down.stderr[-2000:]
    assert "deleted the Prompt flow connection phi3_alpha_" in down.stdout
    again = runner_cli("run.name=beta", "register.model_name=phi3-chat-beta", "stages=[chat]", cwd=root)
    assert again.returncode == 0 and "[chat] A: " in again.stdout, again.stderr[-2000:]
    alpha = runner_cli("run.name=alpha", "register.model_name=phi3-chat-alpha", "stages=[chat]", cwd=root)
    assert alpha.returncode != 0 and "Traceback" not in alpha.stderr  # its endpoint is gone, and it says so
