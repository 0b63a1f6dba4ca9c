"""Running `python -m runner` as a user would, and other code in a fresh interpreter."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from runner import REPO_ROOT

HEAVY = {"torch", "transformers", "datasets", "mlflow", "azure", "promptflow", "trl"}
NOT_IN_TRAINER = {"runner", "hydra", "azure", "promptflow"}  # trainer/ runs in the Azure job and deployment


SAMPLE = REPO_ROOT / "runner" / "samples" / "chat_sample.jsonl"  # the shipped sample (data=sample)


def read_jsonl(path) -> list:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def run_data(spec, tmp_path) -> dict:
    """The data stage alone on spec, in tmp_path/run; the manifest."""
    from runner.app import execute

    spec["stages"] = ["data"]
    return execute(spec, tmp_path / "run", out=lambda *_: None)


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def runner_cli(*args, cwd, env=None, timeout=300):
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "runner", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def runner_started(*args, cwd, new_session: bool = False) -> subprocess.Popen:
    """`python -m runner *args` started in cwd as a person starts it, its output (stdout and stderr, line by line,
    unbuffered) to read as it comes; new_session: its own process group, to be killed as a whole."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=new_session,
    )


def runner_in_process(*args, cwd) -> subprocess.CompletedProcess:
    """What runner_cli returns, from `python -m runner *args` run in this process (its argv and working directory
    set for the call, its output captured): for tests of what the runner does with a command line, where a new
    interpreter's start-up (a second each) is not the point. Exit statuses, tracebacks and what reaches a terminal
    are checked through runner_cli."""
    import contextlib
    import io

    from hydra.core.global_hydra import GlobalHydra

    import runner.__main__ as entry

    out, err = io.StringIO(), io.StringIO()
    argv, here = sys.argv, os.getcwd()
    sys.argv = ["runner", *map(str, args)]
    os.chdir(cwd)
    GlobalHydra.instance().clear()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                entry.main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        sys.argv = argv
        os.chdir(here)
        GlobalHydra.instance().clear()
    return subprocess.CompletedProcess(["python", "-m", "runner", *args], code, out.getvalue(), err.getvalue())


def imported_by(code: str, *argv, cwd=REPO_ROOT, timeout=120) -> set[str]:
    """Run code in a fresh interpreter; the top-level packages it left imported. Fails if the code fails."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    r = subprocess.run(
        [sys.executable, "-c", probe, *map(str, argv)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return set(json.loads(r.stdout.strip().splitlines()[-1]))


def first_turn(row) -> tuple[list, str]:
    """The messages up to a chat's first assistant turn, and that turn's text (the tiny model learns these)."""
    msgs = row["messages"]
    k = next(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    return msgs[:k], msgs[k]["content"]
