"""The local endpoint's process: start `python -m serving.serve` in the background, check it, stop it.

The server runs in its own session, so the endpoint outlives the command that started it. It writes
deploy/server.json (pid, port) once the model is loaded; that file, not the manifest, says what is serving.
Each server started is recorded at once in deploy/servers/<pid>.json (before it loads anything), and ours() also
finds, by command line, any serving.serve of this run directory that a killed command never recorded: deploy and
teardown stop them all. A pid is only ever signalled when its command line shows serving.serve for this run
directory (pids get reused).
"""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from common.files import write_atomic

from .. import REPO_ROOT
from ..errors import StageFailed

SERVER_MODULE = "serving.serve"
EARLIER_MODULES = ("trainer.serve",)  # where the server lived before serving/: one started then is still stopped
LOG_TAIL_LINES = 20
STOP_TIMEOUT_S = 10


class Paths:
    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir) / "deploy"
        self.ready = self.dir / "server.json"  # written by the server itself: what is running now
        self.log = self.dir / "server.log"
        self.models = self.dir / "model"
        self.started = self.dir / "servers"  # <pid>.json for every server started, written as it starts
        self.key = Path(run_dir) / "secrets" / "endpoint.key"


def command(
    model_dir: Path,
    key_file: Path,
    ready_file: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    limit: int | None = None,
    timeout_ms: int | None = None,
    model_name: str | None = None,
) -> list[str]:
    """The server's command line. The key is passed as a file, never as an argument."""
    cmd = [
        sys.executable,
        "-m",
        SERVER_MODULE,
        "--model-dir",
        str(model_dir),
        "--key-file",
        str(key_file),
        "--host",
        host,
        "--port",
        str(port),
        "--ready-file",
        str(ready_file),
    ]
    return (
        cmd
        + (["--max-new-tokens-limit", str(limit)] if limit else [])
        + (["--request-timeout-ms", str(timeout_ms)] if timeout_ms else [])
        + (["--model-name", model_name] if model_name else [])
    )


def start(cmd: list[str], log_file: Path, started: Path | None = None) -> subprocess.Popen:
    """Start the server detached from this process (own session, no stdin), its output into log_file; recorded in
    started/<pid>.json before it has loaded anything."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    with open(log_file, "wb") as log:
        log.write(f"$ {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    if started is not None:
        started.mkdir(parents=True, exist_ok=True)
        write_atomic(started / f"{proc.pid}.json", json.dumps({"pid": proc.pid, "started": time.time()}))
    return proc


def ours(p: "Paths") -> list[int]:
    """Every live serving.serve of this run directory: recorded as started, or found by its command line."""
    import psutil

    pids = {int(f.stem) for f in p.started.glob("*.json") if f.stem.isdigit()} | set(psutil.pids())
    return sorted(pid for pid in pids if pid != os.getpid() and is_ours(pid, p.ready))


def stop_all(p: "Paths") -> list[int]:
    """Stop every server of this run directory; forget the records of those gone. The pids stopped."""
    stopped = [pid for pid in ours(p) if stop(pid, p.ready)]
    for f in p.started.glob("*.json"):
        if not is_ours(int(f.stem) if f.stem.isdigit() else -1, p.ready):
            f.unlink(missing_ok=True)
    return stopped


def command_line(pid: int) -> str:
    """The process's command line ('' when it is gone, a zombie, or not readable), as psutil reads it."""
    import psutil

    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def is_ours(pid, ready_file: Path) -> bool:
    """True only for a live serving.serve started for this run directory."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    cmd = command_line(pid)
    return any(f"-m {m} " in cmd for m in (SERVER_MODULE, *EARLIER_MODULES)) and str(ready_file) in cmd


def stop(pid, ready_file: Path, timeout: float = STOP_TIMEOUT_S) -> bool:
    """SIGTERM, then SIGKILL after timeout. Returns whether there was a server of ours to stop."""
    import psutil

    if not is_ours(pid, ready_file):
        return False
    try:
        proc = psutil.Process(pid)  # psutil checks it is still the same process (pids get reused) before signalling
        for send, wait in ((proc.terminate, timeout), (proc.kill, 5)):
            send()
            try:
                proc.wait(wait)  # our own child (tests, one process) is reaped too, so it is no zombie
                return True
            except psutil.TimeoutExpired:
                if not is_ours(pid, ready_file):  # a zombie whose parent has not collected it: stopped all the same
                    return True
    except psutil.NoSuchProcess:
        return True
    raise StageFailed(f"the endpoint server (pid {pid}) did not stop, even after SIGKILL")


def health_ok(url: str, timeout: float = 3) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200 and json.loads(resp.read()).get("status") == "ok"
    except Exception:  # refused, reset, timed out, not JSON: not healthy either way
        return False


def log_tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


def read_ready(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def wait_ready(proc: subprocess.Popen, host: str, ready_file: Path, log_file: Path, timeout: float) -> dict:
    """Wait until the server wrote its ready file and answers /health; its ready info (pid, port)."""
    deadline = time.monotonic() + timeout
    while True:
        code = proc.poll()
        if code is not None:
            raise StageFailed(
                f"the endpoint server exited with status {code} before it was ready; "
                f"last lines of {log_file}:\n{log_tail(log_file)}"
            )
        info = read_ready(ready_file)
        if info and info.get("pid") == proc.pid and health_ok(f"http://{host}:{info['port']}/health"):
            return info
        if time.monotonic() > deadline:
            stop(proc.pid, ready_file)
            raise StageFailed(
                f"the endpoint server did not answer its health route within {timeout:g}s "
                f"(deploy.ready_timeout_s); last lines of {log_file}:\n{log_tail(log_file)}"
            )
        time.sleep(0.25)


def new_key(path: Path) -> None:
    """A fresh random key in a 0600 file in a 0700 folder: its only copy on disk."""
    import secrets

    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    write_atomic(path, secrets.token_urlsafe(32) + "\n", mode=0o600)
