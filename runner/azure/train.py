"""train (Azure ML): the fine-tuning as a command job on an Azure ML cluster, streamed to the end."""

import re
import secrets
from pathlib import Path

from ..errors import Detached, StageFailed
from ..redact import scrub
from ..spec import hardware
from ..spec.memory_fit import attention_line, memory_line, sharding_line
from ..stages import template_audit
from . import resources
from .client import azure_errors, client, get_or_none, load, rel, summary
from .retry import call, call_once

TERMINAL = ("Completed", "Failed", "Canceled", "NotResponding")


@azure_errors
def run(spec, ctx) -> dict:
    """Submit the job (or pick up the one an interrupted attempt submitted), follow it, and read its summary.

    In a sweep's first pass (ctx.point["detach"]) it stops after submitting: the launcher follows every job at once.
    """
    data = ctx.upstream("data")
    ml, log = client(spec), ctx.log
    job = attachable(ml, spec, ctx)
    if job is None:
        job = submit(ml, spec, ctx, data)  # notes the job's name before submitting it
    else:
        ctx.note({"job_name": job.name})  # a kill from here on does not lose the job: the next run follows it
    if ctx.point.get("detach") and job.status not in TERMINAL:
        raise Detached({"job_name": job.name}, f"job {job.name} submitted; the sweep follows it with the others")
    if job.status == "Completed":  # seen finished just now (a sweep's last pass): nothing left to stream
        final, streamed_error = job, None
    else:
        streamed_error = follow(ml, job, log)
        final = call("read the job's status", ml.jobs.get, job.name, log=log)
    if final.status != "Completed":
        detail = f"\n{summary(streamed_error)}" if streamed_error else ""
        raise StageFailed(
            f"Azure ML job {job.name} ended with status {final.status}; "
            f"az ml job show --name {job.name} --web opens it in Studio{detail}"
        )
    metrics = job_summary(ml, ctx, job.name)
    c = spec["compute"]
    seconds = ctx.previous.get("outputs", {}).get("running_s") or metrics.get("train_runtime_s")
    # node-hours at the list price: from the time the sweep saw it running, else the training time alone
    usd = hardware.usd(c["instance_type"], seconds / 3600 * c["instance_count"]) if seconds else None
    return {
        "job_name": job.name,
        "status": final.status,
        "model_path": resources.model_path(job.name),
        "environment": ctx.manifest.outputs("train").get("environment"),
        "compute": c["cluster_name"] or f"serverless {c['instance_type']}",
        "experiment": spec["run"]["experiment_name"],
        "eval_sha256": (data.get("sha256") or {}).get(
            "test.jsonl"
        ),  # the eval rows these losses are on (sweep summaries)
        **{
            k: metrics.get(k)
            for k in (
                "eval_loss_before",
                "eval_loss",
                "train_loss",
                "train_runtime_s",
                "tokens_per_s",
                "steps",
                "rows_cut_before_stop",
                "eval_dir",
            )
        },
        "cost_usd": None if usd is None else round(usd, 2),
    }


def submit(ml, spec, ctx, data):
    log = ctx.log
    job_name = new_job_name(spec)  # chosen here so a retried submit cannot start a second job
    ctx.note({"job_name": job_name})  # before submitting (the code upload takes a while): a kill loses no job
    res = resources.prepare_train(spec, ctx, data, job_name=job_name)
    env = call(
        "create the environment",
        ml.environments.create_or_update,
        load(ctx, "environment.yml", res["environment.yml"]),
        log=log,
    )
    log(f"[train] environment {env.name}:{env.version} ({spec['compute']['image']})")
    if resources.serverless(spec):
        log(
            f"[train] serverless compute: Azure starts {spec['compute']['instance_count']} x "
            f"{spec['compute']['instance_type']} for this job alone (no cluster)"
        )
    else:
        ensure_compute(ml, ctx, load(ctx, "compute.yml", res["compute.yml"]))
    # a retried submit of the same name would be refused (409) while the first one runs: look for it first
    job = call_once(
        "submit the job",
        ml.jobs.create_or_update,
        load(ctx, "job.yml", res["job.yml"]),
        check=lambda: get_or_none("look up the job", ml.jobs.get, job_name, log),
        log=log,
    )
    ctx.note({"environment": f"{env.name}:{env.version}"})
    # Studio's links carry the subscription and tenant ids: neither is printed nor kept
    log(
        f"[train] job {job.name} submitted ({scrub(job.studio_url or '')}); az ml job show --name {job.name} --web "
        "opens it in Studio"
    )
    return job


def attachable(ml, spec, ctx):
    """The job an earlier attempt of this stage submitted with the same inputs, unless it ended badly."""
    prev = ctx.previous
    name = prev.get("outputs", {}).get("job_name")
    if not name:
        return None
    if spec["force"] or prev.get("inputs_hash") != ctx.inputs_hash:
        if prev.get("status") in ("running", "submitted", "failed"):
            old = get_or_none("look up the earlier job", ml.jobs.get, name, ctx.log)
            if old is not None and old.status not in TERMINAL:
                ctx.warn(
                    f"job {name} of an earlier attempt (other inputs) is still {old.status}; it is not followed "
                    f"any more: az ml job cancel -n {name} stops it"
                )
        return None
    # submitted (a sweep's first pass), running or interrupted: the job goes on in the cloud. A stage that failed
    # for another reason is tried afresh (a failed or cancelled job is submitted again).
    if prev.get("status") == "failed" and prev.get("error") != "interrupted":
        return None
    job = get_or_none("look up the job", ml.jobs.get, name, ctx.log)
    if job is None or (job.status in TERMINAL and job.status != "Completed" and prev.get("status") != "submitted"):
        return None
    ctx.log(f"[train] following job {name} (submitted by an earlier attempt; status {job.status})")
    if prev.get("outputs", {}).get("environment"):
        ctx.note({"environment": prev["outputs"]["environment"]})
    return job


def job_summary(ml, ctx, job_name) -> dict:
    """The trainer's figures (outputs/summary.json of the job); {} when unavailable.

    The download (the job's default artifacts: its logs too, which may name the workspace) is removed once read;
    the figures go to the manifest.
    """
    import json
    import shutil

    dest = resources.folder(ctx) / "job-artifacts" / job_name
    try:
        call("download the job's summary", ml.jobs.download, job_name, download_path=str(dest), log=ctx.log)
        figures = json.loads((dest / "artifacts" / "outputs" / "summary.json").read_text())
        evaluated = dest / "artifacts" / "outputs" / "eval"
        kept = resources.folder(ctx) / "job-eval"
        shutil.rmtree(kept, ignore_errors=True)
        if (evaluated / "metrics.json").is_file():  # the eval the job ran after training: the eval stage reads it
            shutil.copytree(evaluated, kept)
            figures["eval_dir"] = str(kept.relative_to(ctx.run_dir))
        return figures
    except Exception as exc:  # the metrics are for the sweep table; the model is what matters
        ctx.warn(f"could not read job {job_name}'s summary.json ({summary(exc)}); its metrics are in Studio")
        return {}
    finally:
        shutil.rmtree(dest.parent, ignore_errors=True)


def new_job_name(spec) -> str:
    base = re.sub(r"[^a-zA-Z0-9_-]", "-", f"{spec['run']['name']}-{spec['model']['name']}")
    return f"{base[:40]}-{secrets.token_hex(4)}"


def ensure_compute(ml, ctx, wanted):
    """Reuse the cluster when it exists (its settings are left alone), else create it."""
    existing = get_or_none("look up the compute cluster", ml.compute.get, wanted.name, ctx.log)
    if existing is None:
        ctx.log(
            f"[train] creating compute cluster {wanted.name} ({wanted.size}, "
            f"{wanted.min_instances}..{wanted.max_instances} nodes)"
        )
        call("create the compute cluster", lambda: ml.compute.begin_create_or_update(wanted).result(), log=ctx.log)
        return
    if str(getattr(existing, "size", "")).lower() != wanted.size.lower():
        ctx.warn(
            f"compute cluster {wanted.name} exists with size {existing.size}, not {wanted.size}; "
            "the job runs on it as it is (rename compute.cluster_name to get a new one)"
        )
    has = getattr(existing, "max_instances", None)
    if has is not None and has < wanted.max_instances:  # a sweep's jobs would queue more than its plan said
        ctx.warn(
            f"compute cluster {wanted.name} exists with max_instances={has}, not {wanted.max_instances}: at most "
            f"{has} node(s) run at once (az ml compute update -n {wanted.name} --max-instances "
            f"{wanted.max_instances} raises it)"
        )


def follow(ml, job, log):
    """Stream the job's logs until it ends. Returns the error streaming raised (a failed job raises one)."""
    import contextlib
    import sys

    from azure.ai.ml.exceptions import MlException

    from ..redact import ScrubbedStream

    try:
        with contextlib.redirect_stdout(ScrubbedStream(sys.stdout)):  # the SDK prints Studio links with the ids
            call("stream the job's logs", ml.jobs.stream, job.name, log=log)
    except MlException as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):
            log(f"[train] job {job.name} keeps running on Azure; stop it with: az ml job cancel -n {job.name}")
            raise KeyboardInterrupt from None
        return exc
    return None


def is_current(outputs, spec, ctx) -> bool:
    return bool(outputs.get("job_name"))


def expected(spec, ctx) -> list[str]:
    """The job's expected time and cost (runner/spec/estimates.py), beside max_cost's bound."""
    from ..spec import estimates

    line = estimates.job_line(spec, ctx.manifest.outputs("data"))
    return [line] if line else []


def max_cost(spec) -> str:
    c = spec["compute"]
    usd = hardware.usd(c["instance_type"], c["max_hours"] * c["instance_count"])
    return f"at most {c['max_hours']} h (compute.max_hours, the job's time limit)" + (
        f", about ${usd:.2f}" if usd is not None else ""
    )


def plan(spec, ctx) -> list[str]:
    c = spec["compute"]
    data = ctx.manifest.outputs("data")
    if not data.get("train_file"):  # not run yet: where the data stage will write
        data = {
            "train_file": Path(ctx.run_dir) / "data" / "train.jsonl",
            "test_file": Path(ctx.run_dir) / "data" / "test.jsonl",
        }
    res = resources.prepare_train(spec, ctx, data)
    env, job = res["environment.yml"], res["job.yml"]
    if resources.serverless(spec):
        where = (
            f"serverless compute: no cluster (no compute.yml); Azure starts {c['instance_count']} x "
            f"{c['instance_type']} for the job alone, {hardware.hourly(c['instance_type'])} per node while it "
            "runs, no idle time billed after it; bounded by the subscription's quota for that VM family"
        )
        after = "after creating the environment"
    else:
        where = (
            f"{rel(ctx, 'compute.yml')}: cluster {c['cluster_name']}, {c['instance_type']}, "
            f"{c['min_instances']}..{c['max_instances']} {c['tier']} nodes in "
            f"{c['location'] or 'the workspace region'}: billed per node-hour while a node runs, "
            f"{hardware.hourly(c['instance_type'])} per node; scales to {c['min_instances']} after "
            f"{c['idle_time_before_scale_down']} s idle"
        )
        after = "after creating the environment and compute"
    return [
        f"{rel(ctx, 'environment.yml')}: environment {env['name']}:{env['version']} = {env['image']} "
        f"+ {rel(ctx, 'conda-train.yml')} (trainer/requirements.txt)",
        where,
        f"{rel(ctx, 'job.yml')}: command job in experiment {spec['run']['experiment_name']}, "
        f"{c['instance_count']} node(s) x {hardware.processes_per_instance(c)} process(es), code {rel(ctx, resources.JOB_CODE)} (trainer/, common/), "
        f"inputs {job['inputs']['train_file']['path']}, {job['inputs']['eval_file']['path']}; {max_cost(spec)}",
        *expected(spec, ctx),
        sharding_line(spec),
        memory_line(spec),
        attention_line(spec),
        *template_audit.plan_lines(spec, ctx),
        f"by hand: az ml job create -f {resources.folder(ctx) / 'job.yml'} ({after})",
    ]
