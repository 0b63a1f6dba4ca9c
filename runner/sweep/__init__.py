"""Sweeps (-m): the launcher above the core loop (launcher.py), its points composed and checked (points.py),
the summary (summary.py), and here what a sweep adds to single runs: its rules, its record and MLflow parent run.

A point of a sweep is a run like any other (its own run directory, manifest and stages); runner/sweep/launcher.py
composes and validates every point before the first one runs, runs each through app.main, then writes the summary.
"""

import json
import os
from pathlib import Path

from common.files import write_atomic

from ..hints import Again
from ..redact import shown
from ..spec.settle import key_of

# ---- the sweep's own rules ------------------------------------------------------------------------


def varying(points) -> list[list[str]]:
    """Each point's overrides that differ between points (data.percent=25), for names and the table."""
    keys = {}
    for p in points:
        for o in shown(p["overrides"]):
            keys.setdefault(key_of(o), set()).add(o)
    vary = {k for k, vals in keys.items() if len(vals) > 1 or any(k not in map(key_of, p["overrides"]) for p in points)}
    return [[o for o in shown(p["overrides"]) if key_of(o) in vary] or shown(p["overrides"]) for p in points]


def point_command(overrides, stages: str) -> str:
    """The command that runs these stages in a sweep point's own folder: -m with one point keeps the folder."""
    return Again.for_point(overrides).command(*stages.split(","))


def deploy_stages(registered: bool) -> str:
    """The stages that deploy a sweep's point: a sweep of stages=[data,train] registers it first."""
    return "deploy,chat" if registered else "register,deploy,chat"


def problems(points) -> list[str]:
    """Rules about the whole sweep; points: [{"overrides", "spec"}]."""
    found = []
    deploying = [p for p in points if "deploy" in p["spec"]["stages"]]
    if len(points) > 1 and deploying:
        found.append(
            f"{len(deploying)} of the {len(points)} points would deploy, each over the same endpoint, and only the last "
            "would stay. A sweep trains, evaluates and registers every point; deploy once, afterwards: "
            f"{point_command(deploying[0]['overrides'], 'deploy,chat')} (the summary prints it for the best point), "
            "or add sweep.deploy=best to deploy the point with the lowest eval loss when the sweep ends. "
            "Drop deploy and chat from stages (stages=[data,train,register]) to sweep."
        )
    return found


# ---- the sweep's record (sweep.json at its root) ---------------------------------------------------


def record_of(sweep_dir: Path) -> dict:
    path = Path(sweep_dir) / "sweep.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def remember(sweep_dir: Path, record: dict):
    write_atomic(Path(sweep_dir) / "sweep.json", json.dumps(record, indent=2) + "\n")


def belongs_to(sweep_dir: Path, runs: list[dict]) -> dict:
    """The recorded sweep these points are all part of ({} if none): re-running one point of it (the summary's
    deploy command, a point redone) summarises the whole sweep again rather than that point alone."""
    prev = record_of(sweep_dir)
    known = {r["run_dir"] for r in prev.get("runs", [])}
    return prev if known and {r["run_dir"] for r in runs} <= known else {}


# ---- MLflow: one parent run per sweep -------------------------------------------------------------


def tracking_uri(spec) -> str:
    """Where the points' training runs go, so the parent is in the same store."""
    from trainer import tracking

    from ..local.train import output_root, store_uri

    return tracking.tracking_uri(store_uri(spec), output_root(spec))


def start_parent(spec, sweep_dir: Path, prev: dict, overrides: list[str], points: int) -> dict:
    """The sweep's MLflow run, which each point's training run names as its parent; a re-run of the same sweep
    (prev: its record) reuses it while it is still in the store."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    from trainer import tracking

    uri, experiment = tracking_uri(spec), spec["run"]["experiment_name"]
    client = mlflow.MlflowClient(uri)
    if prev.get("tracking_uri") == uri and prev.get("parent_run_id"):
        try:
            client.get_run(prev["parent_run_id"])
            return {"tracking_uri": uri, "run_id": prev["parent_run_id"]}
        except Exception:  # the store was replaced since: a new parent
            pass
    what = " ".join(shown(overrides))
    run = client.create_run(
        tracking.use_experiment(uri, experiment),
        run_name=f"{spec['run']['name']} sweep: {what}",
        tags={"runner.sweep_dir": str(Path(sweep_dir).resolve()), "runner.sweep": what, "runner.points": str(points)},
    )
    return {"tracking_uri": uri, "run_id": run.info.run_id}


def end_parent(parent: dict, summary: dict, sweep_dir: Path, ok: bool):
    """Log the summary's files to the parent run and close it."""
    import mlflow

    from trainer import tracking

    client = mlflow.MlflowClient(parent["tracking_uri"])
    for name in ("sweep.md", "sweep.csv", "sweep.png"):
        if (Path(sweep_dir) / name).is_file():
            tracking.best_effort(
                "log the sweep summary", client.log_artifact, parent["run_id"], str(Path(sweep_dir) / name)
            )
    best = summary.get("best")
    if best:
        tracking.best_effort("log the best point", client.set_tag, parent["run_id"], "runner.best_point", best["point"])
        tracking.best_effort(
            "log the best eval loss",
            client.log_metric,
            parent["run_id"],
            "best_eval_loss",
            float(best["eval loss after"]),
        )
    tracking.best_effort(
        "close the sweep's run", client.set_terminated, parent["run_id"], status="FINISHED" if ok else "FAILED"
    )
