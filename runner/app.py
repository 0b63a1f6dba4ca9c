"""The runner as plain functions: config -> spec -> validate -> plan or execute. __main__ only adds Hydra."""

import hashlib
import shutil
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

from common.files import write_atomic

from .context import Context
from .errors import INTERRUPTED, Detached, StageFailed, UserError
from .hints import Again, closing_block
from .manifest import Manifest
from .redact import command_shown, redacted
from .registry import implementation, module_for, selected
from .rundir import OneWriter, in_use, remove_created
from .spec import azure_env_paths, digest, dump_yaml, env_sourced_paths, get_path, rules, to_spec
from .spec.settle import settle
from .spec.validate import validate


def say(line: str):
    """What the runner prints for a person, flushed line by line: its output may be a pipe (| tee, a test, a log
    collector), and a line like the chat page's URL must not wait in a buffer while the page serves."""
    print(line, flush=True)


def inputs_hash(stage, spec, manifest) -> str:
    parts = {p: get_path(spec, p) for p in stage.depends_on}
    parts["upstream"] = {u: manifest.outputs(u) for u in stage.upstream}
    for p in stage.files:  # an edited file is a changed input (validation made sure it exists)
        path = get_path(spec, p)
        if path:
            parts[f"sha256 of {p}"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return digest(parts)


def stage_is_current(stage, module, spec, ctx, h) -> bool:
    entry = ctx.manifest.entry(stage.name)
    if stage.always or entry.get("status") != "done" or entry.get("inputs_hash") != h:
        return False
    check = getattr(module, "is_current", None)
    return check(entry["outputs"], spec, ctx) if check else True


def plan(spec, run_dir: Path, spec_text: str | None, out=say) -> list[str]:
    """Print the spec (spec_text, as spec.yaml holds it) and what each selected stage would do; write plan.txt.

    spec_text=None (a sweep's points): the spec stays in the point's spec.yaml, the plan names it.
    """
    ctx = Context(Path(run_dir), Manifest(run_dir))
    lines = [f"run directory: {run_dir}", "stages:"]
    for stage in selected(spec["stages"]):
        module = module_for(stage, spec)
        h = inputs_hash(stage, spec, ctx.manifest)
        if stage.always:
            state = "runs every time"
        elif spec["force"]:
            state = "would run (force=true)"
        elif stage_is_current(stage, module, spec, ctx, h):
            state = "would be skipped (inputs unchanged)"
        elif ctx.manifest.entry(stage.name):
            state = "would run (inputs changed or outputs missing)"
        else:
            state = "would run (never ran here)"
        lines += [f"  {stage.name}: {state}", f"      reads:  {stage.reads}", f"      writes: {stage.writes}"]
        if hasattr(module, "plan"):
            lines += [f"      {x}" for x in module.plan(spec, ctx)]
    text = "\n".join(lines) + "\n"
    write_atomic(Path(run_dir) / "plan.txt", text)
    if spec_text is not None:
        out(spec_text.rstrip())
        out("---")
    else:
        out(f"--- sweep point: the resolved spec is in {Path(run_dir) / 'spec.yaml'}")
    out(text.rstrip())
    return lines


def execute(spec, run_dir: Path, out=say, point=None, again: Again | None = None) -> dict:
    """Run the selected stages in order, skipping those whose inputs are unchanged.

    point: set by the sweep launcher (its name, the sweep's MLflow parent run, whether Azure jobs detach).
    again: the commands that select this run, for the hints stages print (python -m runner with no options if None).
    """
    ctx = Context(Path(run_dir), Manifest(run_dir), log=out, point=point or {}, again=again or Again())
    for stage in selected(spec["stages"]):
        module = module_for(stage, spec)
        h = inputs_hash(stage, spec, ctx.manifest)
        if not spec["force"] and stage_is_current(stage, module, spec, ctx, h):
            out(f"[{stage.name}] skipped: inputs unchanged since the last run (force=true redoes it)")
            continue
        out(f"[{stage.name}] running")
        ctx.inputs_hash, ctx.stage = h, stage.name
        ctx.previous = ctx.manifest.entry(stage.name)
        ctx.manifest.record(stage.name, "running", h)
        t0 = time.time()
        try:
            outputs = module.run(spec, ctx)
        except Detached as exc:  # its work goes on elsewhere: the sweep launcher waits, then runs this again
            ctx.manifest.record(stage.name, "submitted", h, {**ctx.manifest.outputs(stage.name), **exc.outputs})
            out(f"[{stage.name}] {exc}")
            break
        except BaseException as exc:
            reason = (
                "interrupted"
                if isinstance(exc, KeyboardInterrupt)
                else str(exc).splitlines()[0]
                if str(exc)
                else type(exc).__name__
            )
            # what the stage noted (a submitted job's name) is kept: the next attempt picks it up
            ctx.manifest.record(stage.name, "failed", h, ctx.manifest.outputs(stage.name), error=reason)
            raise
        ctx.manifest.record(stage.name, "done", h, outputs, seconds=round(time.time() - t0, 1))
        out(f"[{stage.name}] done in {time.time() - t0:.1f}s")
    return ctx.manifest.data


def write_spec(spec, run_dir: Path, env_paths=None) -> str:
    """Write spec.yaml, redacted, and return its text. azure.* values are always redacted, also when given on the
    command line instead of the environment."""
    text = dump_yaml(redacted(spec, {**azure_env_paths(), **(env_paths or {})}))
    write_atomic(Path(run_dir) / "spec.yaml", text)
    return text


def main(cfg, run_dir, out=say, sweep: dict | None = None, again: Again | None = None) -> int:
    """A composed config in, an exit status out: what `python -m runner` does once Hydra has composed.

    sweep: in a -m sweep, {"overrides": [...], "point": {...}, "spec": ...} (runner/sweep/launcher.py, whose points come
    with their spec already settled and validated); None for a single run.
    again: what selects this run on a command line, for the commands it prints (runner/hints.py).
    """
    run_dir = Path(run_dir)
    fresh = not run_dir.exists() or not any(run_dir.iterdir())  # Hydra made it just now, or it was empty
    point = None if sweep is None else sweep.get("point")
    if sweep is not None and sweep.get("spec") is not None:
        return run(sweep["spec"], run_dir, env_sourced_paths(cfg), fresh, out, point, checked=True, again=again)
    try:
        spec = to_spec(cfg)
    except UserError as exc:
        return _refuse(exc, run_dir, fresh)
    spec = settle(spec, None if sweep is None else sweep["overrides"])
    return run(spec, run_dir, env_sourced_paths(cfg), fresh_dir=fresh, out=out, point=point, again=again)


def run(spec, run_dir, env_paths=None, fresh_dir=False, out=say, point=None, checked=False, again=None) -> int:
    """Validate (unless checked already), then plan or execute. Returns the exit status."""
    run_dir, again = Path(run_dir), again or Again()
    try:
        if not checked:
            validate(spec)
    except UserError as exc:
        return _refuse(exc, run_dir, fresh_dir)
    for warning in rules.warnings(spec):
        print(f"warning: {warning}", file=sys.stderr)
    run_dir.mkdir(parents=True, exist_ok=True)
    busy = in_use(run_dir)
    if busy and spec["plan"]:  # the plan may differ from the running spec: it must not overwrite its files
        out(f"note: {run_dir} is in use by {busy}; planned in a scratch copy, nothing written there")
        with tempfile.TemporaryDirectory() as tmp:
            scratch = Path(tmp) / run_dir.name
            scratch.mkdir()
            if (run_dir / "manifest.json").exists():
                shutil.copy(run_dir / "manifest.json", scratch)
            return run(spec, scratch, env_paths, out=out, point=point, checked=True, again=again)
    beside = bool(busy) and spec["stages"] == ["teardown"]  # stopping what runs is never kept out
    if beside:
        out(f"note: {run_dir} is in use by {busy}; tearing down beside it (its spec.yaml left as it is)")
    try:
        with nullcontext() if spec["plan"] or beside else OneWriter(run_dir, command_shown(sys.argv[1:])):
            spec_text = None if beside else write_spec(spec, run_dir, env_paths)
            if spec["plan"]:
                plan(spec, run_dir, None if (point or {}).get("name") else spec_text, out)
            else:
                execute(spec, run_dir, out, point, again)
    except (UserError, StageFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; the manifest marks the stage failed, re-run the same command to continue", file=sys.stderr)
        return INTERRUPTED
    except Exception:
        traceback.print_exc()
        print("error: a stage crashed (traceback above); the manifest marks it failed", file=sys.stderr)
        return 1
    return 0 if spec["plan"] or point is not None else finish(spec, run_dir, out, again)


def finish(spec, run_dir: Path, out, again: Again) -> int:
    """After a single run's stages: what next (what still runs, how to chat, how to stop it), then the chat page
    when chat.ui=true asked for it."""
    from .stages.prompt_flow import commands

    for line in closing_block(spec, Manifest(run_dir), again, implementation("deploy", spec), commands):
        out(line)
    if spec["chat"]["ui"] and "chat" in spec["stages"]:
        return chat_page(spec, run_dir, out, again)
    return 0


def chat_page(spec, run_dir: Path, out=say, again: Again | None = None) -> int:
    """chat.ui=true: the page is served once the stages are done, outside the run's lock (it only reads what
    deploy recorded, and follows a redeploy), so other commands on the run go on while it is open."""
    from .stages import chat

    try:
        return chat.serve(spec, run_dir, out, again)
    except (UserError, StageFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 0


def _refuse(exc: UserError, run_dir: Path, fresh: bool) -> int:
    if fresh:
        remove_created(run_dir)
    print(f"error: {exc}", file=sys.stderr)
    return exc.exit_code
