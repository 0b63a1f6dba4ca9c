"""register -> deploy -> chat -> teardown on this machine, through the runner, on the session's trained model."""

import json
import os
import shutil
import signal
import stat
import time
from pathlib import Path

import pytest

from runner.app import execute
from runner.context import Context
from runner.errors import StageFailed
from runner.local.server import command_line
from runner.manifest import Manifest

from ..support import _endpoint as ep  # before promptflow: points its home at a temporary folder
from ..support.helpers import HEAVY, imported_by


@pytest.fixture(scope="module")
def run_dir(trained_run, tmp_path_factory):
    """A run directory whose manifest already has the data and train stages (copied from the session's run)."""
    d = tmp_path_factory.mktemp("pipeline") / "default" / "local_tiny_sample"
    d.mkdir(parents=True)
    shutil.copy(trained_run[1] / "manifest.json", d / "manifest.json")
    shutil.copy(trained_run[1] / "spec.yaml", d / "spec.yaml")
    yield d
    run(trained_run, d, "teardown")  # never leave a server behind


def run(trained_run, run_dir, *stages, **chat):
    spec = json.loads(json.dumps(trained_run[0]))
    spec["stages"] = list(stages)
    spec["chat"].update(chat)
    lines = []
    manifest = execute(spec, run_dir, out=lines.append)
    return manifest["stages"], "\n".join(lines)


def alive(pid) -> bool:
    return bool(command_line(pid))  # a zombie has an empty command line


def test_register_deploy_chat_then_reuse(trained_run, run_dir):
    question, answer = ep.single_turn_pairs(trained_run[2], 1)[0]
    stages, log = run(trained_run, run_dir, "register", "deploy", "chat", questions=[question], max_new_tokens=96)
    reg, dep, chat = (stages[s]["outputs"] for s in ("register", "deploy", "chat"))
    assert reg["model_uri"] == f"models:/{reg['model_name']}/{reg['model_version']}"
    assert dep["kind"] == "local" and dep["url"] == f"http://127.0.0.1:{dep['port']}/score"
    assert "serving.serve" in command_line(dep["pid"])
    assert chat["answers"] == [{"question": question, "answer": answer}]
    assert f"[chat] A: {answer}" in log

    key_file = Path(dep["key_file"])
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    key = key_file.read_text().strip()
    for f in ("manifest.json", "spec.yaml", "deploy/server.log"):
        assert key not in (run_dir / f).read_text(), f
    assert ep.post(dep["url"], {"input_data": [question]}, key)[0] == 200

    # a second run reuses the running endpoint: same pid, same key
    stages, log = run(trained_run, run_dir, "register", "deploy")
    assert "[deploy] skipped" in log and stages["deploy"]["outputs"]["pid"] == dep["pid"]
    assert key_file.read_text().strip() == key


def test_registering_again_adds_a_version(trained_run, run_dir):
    from mlflow import MlflowClient

    from runner.local import register

    before = Manifest(run_dir).outputs("register")
    out = register.run(trained_run[0], Context(run_dir, Manifest(run_dir), log=lambda *_: None))
    assert int(out["model_version"]) == int(before["model_version"]) + 1
    client = MlflowClient(tracking_uri=out["tracking_uri"], registry_uri=out["tracking_uri"])
    assert client.get_model_version(out["model_name"], out["model_version"]).source == out["source_model_uri"]


def test_deploy_serves_a_downloaded_copy_when_the_train_folder_is_gone(trained_run, run_dir, tmp_path):
    from runner.local import deploy, server

    reg = {**Manifest(run_dir).outputs("register"), "mlflow_model_dir": str(tmp_path / "gone")}
    folder = deploy.model_folder(reg, server.Paths(tmp_path), lambda *_: None)
    assert folder == tmp_path / "deploy" / "model" / f"v{reg['model_version']}" and (folder / "MLmodel").is_file()


def test_a_server_killed_by_hand_is_noticed_and_started_again(trained_run, run_dir):
    from runner.local import deploy

    ctx = Context(run_dir, Manifest(run_dir))
    old = ctx.manifest.outputs("deploy")
    assert deploy.is_current(old, trained_run[0], ctx)
    os.kill(old["pid"], signal.SIGKILL)
    deadline = time.time() + 10
    while alive(old["pid"]) and time.time() < deadline:
        try:  # the server is this process's child here: collect it, so it is no zombie
            os.waitpid(old["pid"], os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    assert not deploy.is_current(old, trained_run[0], ctx)

    stages, log = run(trained_run, run_dir, "deploy")
    new = stages["deploy"]["outputs"]
    assert "[deploy] running" in log and new["pid"] != old["pid"]
    assert deploy.is_current(new, trained_run[0], Context(run_dir, Manifest(run_dir)))


def test_chat_on_a_dead_endpoint_says_how_to_restart(trained_run, run_dir):
    from runner.local import deploy

    ctx = Context(run_dir, Manifest(run_dir))
    out = ctx.manifest.outputs("deploy")
    broken = Manifest(run_dir)
    broken.data["stages"]["deploy"]["outputs"] = {**out, "pid": 1}  # not our server
    with pytest.raises(StageFailed, match=r"stages=\[deploy,chat\]"):
        deploy.endpoint_credentials(trained_run[0], Context(run_dir, broken))
    assert deploy.is_current(out, trained_run[0], ctx)  # the real one is untouched


def test_teardown_stops_the_server_and_is_idempotent(trained_run, run_dir):
    pid = Manifest(run_dir).outputs("deploy")["pid"]
    stages, log = run(trained_run, run_dir, "teardown")
    assert f"stopped the local endpoint (pid {pid})" in log
    assert not alive(pid)
    assert stages["deploy"]["status"] == "stopped" and stages["deploy"]["outputs"]["pid"] == pid
    assert not (run_dir / "secrets" / "endpoint.key").exists()

    stages, log = run(trained_run, run_dir, "teardown")
    assert "nothing to stop" in log and stages["teardown"]["status"] == "done"

    # the next deploy starts a new server
    stages, log = run(trained_run, run_dir, "deploy")
    assert "[deploy] running" in log and alive(stages["deploy"]["outputs"]["pid"])


def test_a_server_that_cannot_start_fails_the_stage_with_its_log(trained_run, run_dir):
    import socket

    spec = json.loads(json.dumps(trained_run[0]))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        spec["deploy"]["port"] = busy.getsockname()[1]
        spec["stages"] = ["deploy"]
        spec["force"] = True
        with pytest.raises(StageFailed, match="Address already in use"):
            execute(spec, run_dir, out=lambda *_: None)
    assert Manifest(run_dir).entry("deploy")["status"] == "failed"


def test_plan_lines_import_nothing_heavy(trained_run, run_dir):
    code = (
        "import json, sys; from pathlib import Path; from runner.context import Context; "
        "from runner.manifest import Manifest; from runner.registry import implementation; "
        f"spec = json.loads({json.dumps(json.dumps(trained_run[0]))}); ctx = Context(Path('.'), Manifest(Path('.'))); "
        "lines = [implementation(s, spec).plan(spec, ctx) for s in ('register', 'deploy', 'chat', 'teardown')]; "
        "assert 'port chosen at start' in str(lines), lines"
    )
    assert imported_by(code, cwd=run_dir) & HEAVY == set()
