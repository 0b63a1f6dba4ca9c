"""The default pipeline SIGKILLed at a moment in each stage, then the same command again, then teardown: the re-run
chats, nothing this run directory started is left running, the manifest names no missing output, no file is
half-written, and MLflow holds no run left RUNNING for it."""

import json
import os
import signal
import time
from pathlib import Path

import pytest

from runner.local.server import Paths, command_line, ours

from ..support.helpers import runner_cli, runner_started

pytestmark = pytest.mark.slow
RUN = "outputs/default/local_tiny_sample"


def server_loading(run_dir):
    """A serving.serve of this run directory has started and has not said it is ready."""
    run_dir = run_dir.resolve()
    return (
        any("serving.serve" in command_line(pid) for pid in processes_of(run_dir))
        and not (run_dir / "deploy" / "server.json").exists()
    )


# (the line after which to wait, what else must be true, then SIGKILL); force=true redoes every stage
MOMENTS = {
    "data": ("[data] running", lambda d: True),
    "train": ("[train] step", lambda d: True),
    "register": ("[register] running", lambda d: True),
    "deploy, its server loading": ("[deploy] running", server_loading),
    "chat": ("[chat] running", lambda d: True),
}


def kill_at(tmp_path, line, ready):
    proc = runner_started("force=true", cwd=tmp_path, new_session=True)
    seen = []
    for out in proc.stdout:
        seen.append(out)
        if out.startswith(line):
            break
    deadline = time.time() + 120
    while not ready(tmp_path / RUN) and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "".join(seen)[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def processes_of(run_dir):
    return [
        pid
        for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
        if pid != os.getpid() and str(run_dir) in command_line(pid)
    ]


def missing_outputs(run_dir):
    manifest = json.loads((run_dir / "manifest.json").read_text())["stages"]
    missing = []
    for stage, entry in manifest.items():
        if entry["status"] != "done":
            continue
        for key, value in entry.get("outputs", {}).items():
            if isinstance(value, str) and value.startswith(str(run_dir)) and not Path(value).exists():
                missing.append(f"{stage}.{key}: {value}")
    return missing


def running_mlflow_runs(run_dir):
    import mlflow

    uri = f"sqlite:///{run_dir.parent.parent / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return [r.info.run_id for r in runs if r.info.status == "RUNNING"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One run directory for every moment (each test leaves it torn down): trained once, then forced each time."""
    cwd = tmp_path_factory.mktemp("faults")
    first = runner_cli("stages=[data,train]", cwd=cwd)
    assert first.returncode == 0, first.stderr[-2000:]
    return cwd


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_a_kill_is_recovered_by_the_same_command_and_teardown_leaves_nothing_running(workdir, moment):
    line, ready = MOMENTS[moment]
    run_dir = (workdir / RUN).resolve()
    kill_at(workdir, line, ready)
    again = runner_cli(cwd=workdir)
    assert again.returncode == 0 and "[chat] A:" in again.stdout, again.stderr[-3000:]
    down = runner_cli("stages=[teardown]", cwd=workdir)
    assert down.returncode == 0, down.stderr[-2000:]
    assert ours(Paths(run_dir)) == [] and processes_of(run_dir) == []
    assert missing_outputs(run_dir) == []
    assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name]  # nothing half-written
    assert running_mlflow_runs(run_dir) == []
