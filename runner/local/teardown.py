"""teardown (local): stop the endpoint server that deploy started. Safe to repeat."""
from . import server
from .server import Paths


def run(spec, ctx):
    p = Paths(ctx.run_dir)
    entry = ctx.manifest.entry("deploy")
    # the manifest's pid, and the server's own file in case deploy failed before recording it
    pids = {pid for pid in (entry.get("outputs", {}).get("pid"), (server.read_ready(p.ready) or {}).get("pid")) if pid}
    stopped = sorted(pid for pid in pids if server.stop(pid, p.ready))
    p.ready.unlink(missing_ok=True)
    p.key.unlink(missing_ok=True)  # the key dies with its server
    ctx.manifest.mark_stopped("deploy")
    if stopped:
        ctx.log(f"[teardown] stopped the local endpoint (pid {', '.join(map(str, stopped))})")
    else:
        ctx.log("[teardown] no local endpoint is running for this run: nothing to stop")
    return {"stopped_pids": stopped}


def plan(spec, ctx):
    return ["stops the local endpoint server recorded by deploy, if it is running"]
