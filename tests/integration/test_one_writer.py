"""One writer per run directory: a second invocation of a running run is refused naming the holder; plan=true and
stages=[teardown] are not kept out; the lock goes with its holder, also when it is SIGKILLed."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from runner import REPO_ROOT

from ..support.helpers import runner_cli, runner_in_process

RUN = "outputs/default/local_tiny_sample"
SECRET = "00000000-feed-beef-0000-000000000000"


def hold(run_dir, *argv):
    """A process that holds run_dir's lock as `python -m runner *argv` would, until killed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    code = (
        "import sys, time; from pathlib import Path; from runner.rundir import OneWriter; "
        "from runner.redact import command_shown; "
        f"lock = OneWriter(Path({str(run_dir)!r}), command_shown({list(argv)!r})).__enter__(); "
        "print('held', flush=True); time.sleep(300)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_invocation_is_refused_naming_the_holder_until_the_holder_dies(tmp_path):
    first = runner_in_process("stages=[data]", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / RUN
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"}
    holder = hold(run_dir, f"azure.subscription_id={SECRET}", "stages=[data,train]")
    try:
        r = runner_cli("stages=[data]", "force=true", cwd=tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert f"is in use: pid {holder.pid} on " in r.stderr and "python -m runner" in r.stderr
        assert "stages=[data,train]" in r.stderr and "azure.subscription_id=<hidden>" in r.stderr
        assert "another run.name=" in r.stderr and SECRET not in r.stderr + (run_dir / ".lock").read_text()
        # nothing of the refused run was written
        assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"} == before

        plan = runner_in_process("stages=[data]", "plan=true", "data.seed=7", cwd=tmp_path)  # a different spec
        assert plan.returncode == 0 and f"is in use by pid {holder.pid}" in plan.stdout, plan.stderr
        assert "data: would run (inputs changed or outputs missing)" in plan.stdout  # read from the real manifest
        assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"} == before

        down = runner_in_process("stages=[teardown]", cwd=tmp_path)
        assert down.returncode == 0 and "tearing down beside it" in down.stdout, down.stderr
        assert (run_dir / "spec.yaml").read_bytes() == before["spec.yaml"]  # the running command's spec stays
    finally:
        holder.send_signal(signal.SIGKILL)  # as a lost terminal or the OOM killer would
        holder.wait()
    r = runner_in_process("stages=[data]", "force=true", cwd=tmp_path)  # the kernel released the lock
    assert r.returncode == 0, r.stderr


def test_a_running_sweep_keeps_a_second_one_out(tmp_path):
    sweep_dir = tmp_path / "outputs/default"
    holder = hold(sweep_dir, "-m", "data.percent=50,100")
    try:
        r = runner_cli("-m", "data.percent=50,100", "stages=[data]", cwd=tmp_path)
        assert r.returncode == 2 and f"pid {holder.pid}" in r.stderr and "running this sweep" in r.stderr, r.stderr
        assert not list(sweep_dir.glob("local_tiny_sample/*/manifest.json"))  # no point ran
        plan = runner_cli("-m", "data.percent=50,100", "stages=[data]", "plan=true", cwd=tmp_path)
        assert plan.returncode == 0, plan.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


@pytest.mark.slow
def test_two_invocations_of_one_run_at_once_train_once(tmp_path):
    args = ["stages=[data,train]"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    first = subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lock = tmp_path / RUN / ".lock"
    deadline = time.time() + 60
    while not (lock.exists() and lock.read_text()) and time.time() < deadline:
        assert first.poll() is None, first.communicate()
        time.sleep(0.1)
    second = runner_cli(*args, cwd=tmp_path)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 2 and f"pid {first.pid}" in second.stderr, second.stderr
    assert "[train] done" in out and "[train]" not in second.stdout
    manifest = json.loads((tmp_path / RUN / "manifest.json").read_text())
    assert manifest["stages"]["train"]["status"] == "done"
    import mlflow

    runs = mlflow.MlflowClient(manifest["stages"]["train"]["outputs"]["tracking_uri"]).search_runs(
        [
            e.experiment_id
            for e in mlflow.MlflowClient(manifest["stages"]["train"]["outputs"]["tracking_uri"]).search_experiments()
        ]
    )
    assert len(runs) == 1


def test_the_next_writer_removes_temp_files_a_kill_left_and_keeps_a_live_writers(tmp_path):
    from common.files import write_atomic
    from runner.rundir import OneWriter

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # exited: its temp file is what a SIGKILL between write and rename leaves
    (tmp_path / "deploy").mkdir()
    cut = [tmp_path / f".manifest.json.tmp{dead_pid}", tmp_path / "deploy" / f".server.json.tmp{dead_pid}"]
    for path in cut:
        path.write_text('{"half": ')
    live = tmp_path / f".server.json.tmp{os.getpid()}"  # a writer still at work (this process)
    live.write_text("{}")
    other = tmp_path / "notes.tmp1"  # not an atomic write's name: not ours to remove
    other.write_text("x")
    with OneWriter(tmp_path, "python -m runner"):
        assert not any(p.exists() for p in cut)
        assert live.exists() and other.exists()
        write_atomic(tmp_path / "manifest.json", "{}")
    assert (tmp_path / "manifest.json").read_text() == "{}"
