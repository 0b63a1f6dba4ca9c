"""teardown (local): stop the endpoint server that deploy started, forget the run's chat connection. Safe to repeat."""

from ..stages import prompt_flow
from . import server
from .server import Paths


def run(spec, ctx):
    p = Paths(ctx.run_dir)
    # every server this run directory started: recorded, or found by its command line after a crash
    stopped = server.stop_all(p)
    p.ready.unlink(missing_ok=True)
    p.key.unlink(missing_ok=True)  # the key dies with its server
    ctx.manifest.mark_stopped("deploy")
    if stopped:
        ctx.log(f"[teardown] stopped the local endpoint (pid {', '.join(map(str, stopped))})")
    else:
        ctx.log("[teardown] no local endpoint is running for this run: nothing to stop")
    prompt_flow.delete_connection(ctx)
    return {"stopped_pids": stopped}


def plan(spec, ctx):
    return [
        "stops every local endpoint server this run directory started (recorded, or left by a crash), and "
        "deletes the run's Prompt flow connection if its chat stage wrote one"
    ]
