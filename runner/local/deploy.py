"""deploy (local): serve the registered model behind a scoring endpoint on this machine that wants a key.

`python -m serving.serve` runs in the background (runner/local/server.py), so the endpoint outlives this
command; `./dev run stages=[teardown]` (with the run's options) stops it. It listens on deploy.host, on a port picked at start
unless deploy.port is set.

The key: each deployment gets a fresh random key, kept in exactly one file, <run_dir>/secrets/endpoint.key
(mode 600, folder 700). It is never put in spec.yaml, the manifest, logs or MLflow, nor on a command line.
The chat stage copies it into this run's Prompt flow connection, which Prompt flow keeps encrypted; the chat
page (chat.ui=true) reads it here and keeps it on the server side.
"""

import time
from pathlib import Path

from ..errors import StageFailed
from . import server
from .server import Paths

ENDPOINT = "the local endpoint"


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
    mlflow.artifacts.download_artifacts(
        artifact_uri=reg["model_uri"],
        dst_path=str(tmp),
        tracking_uri=reg["tracking_uri"],
        registry_uri=reg["tracking_uri"],
    )
    tmp.rename(dst)
    return dst


def run(spec, ctx):
    reg = ctx.upstream("register")
    d, p = spec["deploy"], Paths(ctx.run_dir)
    p.dir.mkdir(parents=True, exist_ok=True)
    # the manifest's outputs are cleared while this stage runs: the server's own file says what is running
    old = (server.read_ready(p.ready) or {}).get("pid")
    for pid in server.stop_all(p):  # the previous one, and any a killed deploy left loading
        ctx.log(
            f"[deploy] stopped the {'previous' if pid == old else 'unrecorded (interrupted deploy)'} "
            f"endpoint server (pid {pid})"
        )
    p.ready.unlink(missing_ok=True)
    model_dir = model_folder(reg, p, ctx.log)
    server.new_key(p.key)
    t0 = time.time()
    model_id = f"{reg['model_name']}:{reg['model_version']}"  # its name in /v1/models and chat completions
    proc = server.start(
        server.command(
            model_dir,
            p.key,
            p.ready,
            d["host"],
            d["port"],
            d["max_new_tokens_limit"],
            d["request_timeout_ms"],
            model_id,
        ),
        p.log,
        p.started,
    )
    info = server.wait_ready(proc, d["host"], p.ready, p.log, d["ready_timeout_s"])
    base = f"http://{d['host']}:{info['port']}"
    ctx.log(
        f"[deploy] {reg['model_uri']} serving at {base}/score and {base}/v1 (OpenAI chat completions) "
        f"(pid {proc.pid}, ready in {time.time() - t0:.1f}s); key in {p.key}; log in {p.log}"
    )
    return {
        "kind": "local",
        "url": f"{base}/score",
        "openai_base_url": f"{base}/v1",
        "model_id": model_id,
        "health_url": f"{base}/health",
        "pid": proc.pid,
        "port": info["port"],
        "key_file": str(p.key),
        "log_file": str(p.log),
        "model_uri": reg["model_uri"],
        "model_dir": str(model_dir),
    }


def is_current(outputs, spec, ctx) -> bool:
    """Reuse a running endpoint; a server that died or was killed by hand is started again."""
    p = Paths(ctx.run_dir)
    return (
        server.is_ours(outputs.get("pid"), p.ready)
        and Path(outputs.get("key_file", "")).is_file()
        and server.health_ok(outputs.get("health_url", ""))
    )


def endpoint_credentials(spec, ctx) -> tuple[str, str]:
    """(scoring URL, key) of the running local endpoint, for the chat stage."""
    out = ctx.upstream("deploy")
    if not is_current(out, spec, ctx):
        raise StageFailed(
            f"the local endpoint (pid {out.get('pid')}) is not running; {ctx.again.redeploy()} starts it again"
        )
    return out["url"], Path(out["key_file"]).read_text().strip()


def running_lines(spec, outputs: dict) -> list[str]:
    """What the closing block says of a running local endpoint: where it answers and where its key is."""
    return [
        f"endpoint:    {outputs.get('url')} runs on after this command (pid {outputs.get('pid')})",
        f"OpenAI API:  base URL {outputs.get('openai_base_url')}, key in {outputs.get('key_file')}",
    ]


def plan(spec, ctx):
    d = spec["deploy"]
    port = d["port"] or "chosen at start"
    return [
        f"local server: python -m {server.SERVER_MODULE} on {d['host']}, port {port}, "
        f"max_new_tokens <= {d['max_new_tokens_limit']}, {d['request_timeout_ms']} ms per request",
        f"key: a new random key in {Paths(ctx.run_dir).key} (mode 600)",
    ]
