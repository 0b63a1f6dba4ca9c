"""The Azure ML side of a -m sweep (runner/sweep/launcher.py): what its jobs cost at most, and following them together.

Each point's train stage submits its job and detaches (runner/azure/train.py); wait_all follows every job until
it ends; the launcher then runs each point again, which picks its finished job up.
"""

import math

from ..manifest import Manifest
from ..spec import estimates, hardware
from . import retry
from .client import azure_errors, client
from .retry import call
from .train import TERMINAL

POLL_S = 30  # how often the sweep asks for its jobs' statuses


def plan(specs) -> list[str]:
    """What the Azure points of a sweep cost at most, and how they run: submitted together, up to max_instances (or,
    serverless, as many as the subscription's quota allows)."""
    azure = [s for s in specs if "train" in s["stages"]]
    if not azure:
        return []
    lines = []
    by_cluster = {}
    for s in azure:
        by_cluster.setdefault(s["compute"]["cluster_name"], []).append(s)
    total_usd, known = 0.0, True
    for cluster, group in by_cluster.items():
        c = group[0]["compute"]
        if cluster is None:  # serverless: no cluster caps the jobs, the subscription's quota does; no idle nodes
            node_hours = sum(s["compute"]["instance_count"] * s["compute"]["max_hours"] for s in group)
            rate = hardware.usd(c["instance_type"], 1.0)
            sku = hardware.gpu(c["instance_type"])
            cores = f" ({sku.gpus} GPU(s) per node)" if sku else ""
            lines.append(
                f"{len(group)} Azure ML job(s) on serverless compute, {c['instance_type']}{cores}: all "
                "submitted at once, then followed together; as many run at once as the subscription's "
                f"quota for that VM family allows ({c['instance_count']} node(s) per job), the rest queue"
            )
            lines.append(
                f"  wall time at most {len(group)} x {c['max_hours']} h (compute.max_hours, each job's time "
                "limit) if the quota runs one at a time, one job's if it runs them all"
            )
            if rate is None:
                known = False
                lines.append(
                    f"  at most {node_hours:g} node-hours of {c['instance_type']} "
                    "(price not in runner/spec/hardware.py)"
                )
            else:
                total_usd += rate * node_hours
                lines.append(
                    f"  costs at most {node_hours:g} node-hours, no idle time = about ${rate * node_hours:.2f} "
                    f"at ${rate}/h ({hardware.AS_OF}, approx.)"
                )
            continue
        at_once = max(1, c["max_instances"] // c["instance_count"])
        rounds = math.ceil(len(group) / at_once)
        node_hours = sum(s["compute"]["instance_count"] * s["compute"]["max_hours"] for s in group)
        rate = hardware.usd(c["instance_type"], 1.0)  # per node-hour
        idle_h = c["max_instances"] * c["idle_time_before_scale_down"] / 3600  # nodes idle before scaling down
        lines.append(
            f"{len(group)} Azure ML job(s) on cluster {cluster}: all submitted at once, then followed together; "
            f"the cluster runs {at_once} at a time (compute.max_instances={c['max_instances']}, "
            f"{c['instance_count']} node(s) per job)"
            + (f", the other {len(group) - at_once} queue on it" if len(group) > at_once else "")
        )
        more = (
            ""
            if at_once >= len(group)
            else f"; compute.max_instances={len(group) * c['instance_count']} runs all at once"
        )
        lines.append(
            f"  wall time at most {rounds} x {c['max_hours']} h (compute.max_hours, each job's time limit){more}"
        )
        if rate is None:
            known = False
            lines.append(
                f"  at most {node_hours + idle_h:.1f} node-hours of {c['instance_type']} "
                "(price not in runner/spec/hardware.py)"
            )
        else:
            usd = rate * (node_hours + idle_h)
            total_usd += usd
            lines.append(
                f"  costs at most {node_hours:g} node-hours + {idle_h:.2f} idle = about ${usd:.2f} at "
                f"${rate}/h ({hardware.AS_OF}, approx.)"
            )
    if known and len(by_cluster) > 1:
        lines.append(f"  in all at most about ${total_usd:.2f}")
    jobs = [estimates.job(s) for s in azure]
    if jobs and all(j and j.get("hours") for j in jobs):
        usd = [j["usd"] for j in jobs]
        lines.append(
            f"  expected: about {sum(j['hours'] for j in jobs):.1f} job-hours"
            + (f", about ${sum(usd):.2f}" if None not in usd else "")
            + f" in all (each point's expected time summed, assuming {estimates.ASSUMED_MFU:.0%} MFU; its plan "
            "says how)"
        )
    return lines


@azure_errors  # a lost login or a refused call ends it as any stage's would: said plainly, without ids
def wait_all(points, log, poll_s: float | None = None) -> dict:
    """Follow the jobs a sweep's points submitted, together, until each has ended; prints each status change.

    points: [(spec, run_dir, name)]. Records in each manifest how long its job was seen running (for its cost).
    Returns {job name: final status}.
    """
    import time

    jobs = {}
    for spec, run_dir, name in points:
        entry = Manifest(run_dir).entry("train")
        if entry.get("status") == "submitted" and entry.get("outputs", {}).get("job_name"):
            jobs[entry["outputs"]["job_name"]] = (spec, run_dir, name)
    if not jobs:
        return {}
    log(f"[sweep] following {len(jobs)} Azure ML job(s) together: " + ", ".join(jobs))
    status, started, running_s = {}, {}, {}
    t0 = time.time()
    while True:
        for job_name, (spec, _, name) in jobs.items():
            if status.get(job_name) in TERMINAL:
                continue
            s = call("read the job's status", client(spec).jobs.get, job_name, log=log).status
            now = time.time()
            if s == "Running" and job_name not in started:
                started[job_name] = now
            if s in TERMINAL and job_name in started:
                running_s[job_name] = now - started[job_name]
            if s != status.get(job_name):
                log(f"[sweep] {name}: job {job_name} {s} ({now - t0:.0f} s)")
                status[job_name] = s
        left = [j for j in jobs if status[j] not in TERMINAL]
        if not left:
            break
        retry._sleep(POLL_S if poll_s is None else poll_s)
    for job_name, seconds in running_s.items():
        m = Manifest(jobs[job_name][1])
        entry = m.entry("train")
        m.record(
            "train",
            entry["status"],
            entry.get("inputs_hash"),
            {**entry.get("outputs", {}), "running_s": round(seconds)},
        )
    done = sum(s == "Completed" for s in status.values())
    log(f"[sweep] {done} of {len(jobs)} job(s) completed")
    return status
