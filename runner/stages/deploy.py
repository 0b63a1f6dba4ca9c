"""deploy: serve the registered model behind a scoring endpoint that wants a key.

Local: `python -m trainer.serve` runs in the background in its own session, so the endpoint outlives this
command (`python -m runner stages=[teardown]` stops it). It listens on deploy.host, on a port picked at start
unless deploy.port is set, and writes deploy/server.json (pid, port) once the model is loaded.

The key: each deployment gets a fresh random key, kept in exactly one file, <run_dir>/secrets/endpoint.key
(mode 600, folder 700). It is never put in spec.yaml, the manifest, logs or MLflow, nor on a command line.
The chat stage copies it into Prompt flow's connection store, which keeps secrets encrypted.
"""
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .. import REPO_ROOT
from ..errors import StageFailed
from ..manifest import write_atomic
from ._backend import azure, is_azure

SERVER_MODULE = "trainer.serve"
LOG_TAIL_LINES = 20
STOP_TIMEOUT_S = 10


class Paths:
    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir) / "deploy"
        self.ready = self.dir / "server.json"  # written by the server itself: what is running now
        self.log = self.dir / "server.log"
        self.models = self.dir / "model"
        self.key = Path(run_dir) / "secrets" / "endpoint.key"


# ---- the server process -------------------------------------------------------------------------------

def command_line(pid: int) -> str:
    """The process's command line ('' when gone or a zombie); /proc on Linux, ps elsewhere."""
    if Path("/proc/self/cmdline").exists():
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""
    r = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
    return r.stdout.strip()


def is_our_server(pid, ready_file: Path) -> bool:
    """True only for a live trainer.serve started for this run directory (pids get reused)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    cmd = command_line(pid)
    return SERVER_MODULE in cmd and str(ready_file) in cmd


def _reap(pid: int):
    try:  # when the server is our own child (tests, one process), collect it so it is not a zombie
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_server(pid, ready_file: Path, timeout: float = STOP_TIMEOUT_S) -> bool:
    """SIGTERM, then SIGKILL after timeout. Returns whether there was a server of ours to stop."""
    if not is_our_server(pid, ready_file):
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pid)
            if not is_our_server(pid, ready_file):
                return True
            time.sleep(0.1)
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


# ---- deploying ---------------------------------------------------------------------------------------

def new_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    write_atomic(path, secrets.token_urlsafe(32) + "\n", mode=0o600)


def _mlmodel_id(folder: Path) -> str | None:
    import yaml
    try:
        return yaml.safe_load((Path(folder) / "MLmodel").read_text()).get("model_id")
    except (OSError, AttributeError, yaml.YAMLError):
        return None


def model_folder(reg: dict, p: Paths, log) -> Path:
    """The registered version's files: the train stage's copy when it is that model, else downloaded once."""
    local = reg.get("mlflow_model_dir")
    source_id = str(reg.get("source_model_uri", "")).rsplit("/", 1)[-1]
    if local and source_id and _mlmodel_id(local) == source_id:
        return Path(local)
    dst = p.models / f"v{reg['model_version']}"
    if (dst / "MLmodel").is_file():
        return dst
    import mlflow
    log(f"[deploy] downloading {reg['model_uri']} to {dst}")
    tmp = dst.with_name(dst.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    mlflow.artifacts.download_artifacts(artifact_uri=reg["model_uri"], dst_path=str(tmp),
                                        tracking_uri=reg["tracking_uri"], registry_uri=reg["tracking_uri"])
    tmp.rename(dst)
    return dst


def start_server(model_dir: Path, spec, p: Paths) -> subprocess.Popen:
    d = spec["deploy"]
    cmd = [sys.executable, "-m", SERVER_MODULE, "--model-dir", str(model_dir), "--key-file", str(p.key),
           "--host", d["host"], "--port", str(d["port"]), "--max-new-tokens-limit", str(d["max_new_tokens_limit"]),
           "--ready-file", str(p.ready)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    with open(p.log, "wb") as log:
        log.write(f"$ {' '.join(cmd)}\n".encode())
        log.flush()
        return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(proc: subprocess.Popen, host: str, p: Paths, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        code = proc.poll()
        if code is not None:
            raise StageFailed(f"the endpoint server exited with status {code} before it was ready; "
                              f"last lines of {p.log}:\n{log_tail(p.log)}")
        info = read_ready(p.ready)
        if info and info.get("pid") == proc.pid and health_ok(f"http://{host}:{info['port']}/health"):
            return info
        if time.monotonic() > deadline:
            stop_server(proc.pid, p.ready)
            raise StageFailed(f"the endpoint server did not answer its health route within {timeout:g}s "
                              f"(deploy.ready_timeout_s); last lines of {p.log}:\n{log_tail(p.log)}")
        time.sleep(0.25)


def run(spec, ctx):
    if is_azure(spec):
        return azure().deploy(spec, ctx)
    reg = ctx.upstream("register")
    p = Paths(ctx.run_dir)
    p.dir.mkdir(parents=True, exist_ok=True)
    # the manifest's outputs are cleared while this stage runs: the server's own file says what is running
    old = read_ready(p.ready) or {}
    if stop_server(old.get("pid"), p.ready):
        ctx.log(f"[deploy] stopped the previous endpoint server (pid {old['pid']})")
    p.ready.unlink(missing_ok=True)
    model_dir = model_folder(reg, p, ctx.log)
    new_key(p.key)
    t0 = time.time()
    proc = start_server(model_dir, spec, p)
    host = "127.0.0.1" if spec["deploy"]["host"] in ("0.0.0.0", "") else spec["deploy"]["host"]
    info = wait_ready(proc, host, p, spec["deploy"]["ready_timeout_s"])
    base = f"http://{host}:{info['port']}"
    ctx.log(f"[deploy] {reg['model_uri']} serving at {base}/score (pid {proc.pid}, ready in {time.time() - t0:.1f}s); "
            f"key in {p.key}; log in {p.log}")
    return {"kind": "local", "url": f"{base}/score", "health_url": f"{base}/health", "pid": proc.pid,
            "port": info["port"], "key_file": str(p.key), "log_file": str(p.log),
            "model_uri": reg["model_uri"], "model_dir": str(model_dir)}


def is_current(outputs, spec, ctx) -> bool:
    """Reuse a running endpoint; a server that died or was killed by hand is started again."""
    if is_azure(spec):
        return True  # the Azure backend owns its endpoint's state; force=true redeploys
    p = Paths(ctx.run_dir)
    return (is_our_server(outputs.get("pid"), p.ready) and Path(outputs.get("key_file", "")).is_file()
            and health_ok(outputs.get("health_url", "")))


def plan(spec, ctx):
    if is_azure(spec):
        return azure().plan("deploy", spec, ctx)
    d = spec["deploy"]
    port = d["port"] or "chosen at start"
    return [f"local server: python -m {SERVER_MODULE} on {d['host']}, port {port}, "
            f"max_new_tokens <= {d['max_new_tokens_limit']}",
            f"key: a new random key in {Paths(ctx.run_dir).key} (mode 600)"]
