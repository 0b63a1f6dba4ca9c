"""teardown: stop the endpoint that deploy started (local server, or the Azure endpoint). Safe to repeat."""
from ._backend import azure, is_azure
from .deploy import Paths, read_ready, stop_server


def run(spec, ctx):
    if is_azure(spec):
        return azure().teardown(spec, ctx)
    p = Paths(ctx.run_dir)
    entry = ctx.manifest.entry("deploy")
    # the manifest's pid, and the server's own file in case deploy failed before recording it
    pids = {pid for pid in (entry.get("outputs", {}).get("pid"), (read_ready(p.ready) or {}).get("pid")) if pid}
    stopped = sorted(pid for pid in pids if stop_server(pid, p.ready))
    p.ready.unlink(missing_ok=True)
    p.key.unlink(missing_ok=True)  # the key dies with its server
    if entry and entry.get("status") != "stopped":
        ctx.manifest.record("deploy", "stopped", entry.get("inputs_hash"))  # keeps outputs; next deploy starts anew
    if stopped:
        ctx.log(f"[teardown] stopped the local endpoint (pid {', '.join(map(str, stopped))})")
    else:
        ctx.log("[teardown] no local endpoint is running for this run: nothing to stop")
    return {"stopped_pids": stopped}


def plan(spec, ctx):
    if is_azure(spec):
        return azure().plan("teardown", spec, ctx)
    return ["stops the local endpoint server recorded by deploy, if it is running"]
