"""What a -m sweep adds to single runs: its points' settings, its own rules, its summary and MLflow parent run.

A point of a sweep is a run like any other (its own run directory, manifest and stages); runner/launcher.py
composes and validates every point before the first one runs, runs them, then writes the summary here.
"""
import copy
import csv
import io
import json
import math
import os
import shlex
from pathlib import Path

from trainer.files import write_atomic

from .manifest import Manifest

NOT_IN_SWEEPS = ("deploy", "chat")  # a sweep deploys once, afterwards: see deploy_command
NOT_IN_POINT_COMMANDS = ("stages", "plan", "force", "sweep.deploy")  # dropped from a point's override list


def key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def shown(overrides) -> list[str]:
    """The overrides that may be printed and kept: azure.* values (a subscription id) belong in the shell only."""
    return [o for o in overrides if not key_of(o).startswith("azure.")]


def settle(spec: dict, overrides) -> dict:
    """The spec a run actually runs. overrides: the point's command-line overrides in a -m sweep, None otherwise.

    data.eval=auto becomes fixed in a sweep (every point evaluated on the same rows) and split in a single run
    (the tutorial's 80/20 of its slice). A sweep's default stages stop at register: it deploys once, afterwards.
    """
    spec = copy.deepcopy(spec)
    in_sweep = overrides is not None
    if spec["data"].get("eval") == "auto":
        spec["data"]["eval"] = "fixed" if in_sweep else "split"
    if in_sweep and not any(key_of(o) == "stages" for o in overrides):
        spec["stages"] = [s for s in spec["stages"] if s not in NOT_IN_SWEEPS]
    return spec


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
    kept = [o for o in shown(overrides) if key_of(o) not in NOT_IN_POINT_COMMANDS]
    return " ".join(["python -m runner -m", *map(shlex.quote, kept), f"stages=[{stages}]"])


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
            "Drop deploy and chat from stages (stages=[data,train,register]) to sweep.")
    return found


# ---- the summary ----------------------------------------------------------------------------------

COLUMNS = ["point", "status", "train rows", "eval rows", "eval loss before", "eval loss after", "train time (s)",
           "tokens/s", "cost (USD)", "eval set", "run directory"]


def row_of(name: str, run_dir: Path) -> dict:
    """A point's row. Its eval losses count only when its training finished on the eval rows its data stage now
    holds (a point whose data was redone after it trained shows no loss until it trains again)."""
    m = Manifest(run_dir)
    data, train = m.outputs("data"), m.outputs("train")
    status = {s: m.entry(s).get("status") for s in ("data", "train", "register")}
    last = next((f"{s} {st}" for s, st in reversed(status.items()) if st), "not run")
    eval_set = (data.get("eval") or {}).get("sha256")
    trained = status["train"] == "done" and train.get("eval_sha256") is not None
    if trained and train["eval_sha256"] != eval_set:
        trained, last = False, "train out of date (its data changed)"
    figures = train if trained else {}
    return {"point": name, "status": last, "train rows": data.get("train_rows"), "eval rows": data.get("test_rows"),
            "eval loss before": figures.get("eval_loss_before"), "eval loss after": figures.get("eval_loss"),
            "train time (s)": figures.get("train_runtime_s"), "tokens/s": figures.get("tokens_per_s"),
            "cost (USD)": figures.get("cost_usd"), "eval set": eval_set,
            "run directory": str(run_dir), "registered": m.entry("register").get("status") == "done"}


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def summarize(sweep_dir: Path, points, out=print) -> dict:
    """Write sweep.md, sweep.csv and sweep.png at the sweep's root and print the table.

    points: [{"name", "overrides", "run_dir"}]. Eval losses are compared only when every point was evaluated on
    the same rows (the eval set's sha256 in each manifest); otherwise the table says why and no point is picked.
    """
    sweep_dir = Path(sweep_dir)
    rows = [row_of(p["name"], Path(p["run_dir"])) for p in points]
    for r in rows:
        r["run directory"] = os.path.relpath(r["run directory"], sweep_dir)
    done = [r for r in rows if r["eval loss after"] is not None]
    eval_sets = {r["eval set"] for r in done}
    comparable = len(eval_sets) == 1
    best = min(done, key=lambda r: r["eval loss after"]) if comparable and done else None
    for r in rows:
        r["eval set"] = (r["eval set"] or "")[:12]

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(sweep_dir / "sweep.csv", buf.getvalue())

    table = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    table += ["| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    notes = []
    if not comparable and len(eval_sets) > 1:
        notes.append(f"Not compared: the points were evaluated on {len(eval_sets)} different eval sets (column 'eval "
                     "set'), so their eval losses say nothing about the training data. Re-run the sweep with "
                     "data.eval=fixed (the default in -m sweeps) to evaluate every point on the same rows.")
    if any(key_of(o).startswith("azure.") for p in points for o in p["overrides"]):
        notes.append("azure.* values given on the command line are left out of the commands here: export them in "
                     "your shell (AZURE_SUBSCRIPTION_ID, ...).")
    plot = plot_losses(rows, sweep_dir / "sweep.png") if comparable and done else None
    if plot is None:
        (sweep_dir / "sweep.png").unlink(missing_ok=True)  # a plot of an earlier sweep would mislead
    if best:
        point = next(p for p in points if p["name"] == best["point"])
        notes.append(f"Lowest eval loss: {best['point']} ({best['eval loss after']:.4f}), every point on the same "
                     f"{best['eval rows']} eval rows (sha256 {best['eval set']}...).")
        stages = "deploy,chat" if best["registered"] else "register,deploy,chat"  # a sweep of stages=[data,train]
        notes.append(f"Deploy it: {point_command(point['overrides'], stages)}")
        notes.append(f"Stop it later: {point_command(point['overrides'], 'teardown')}")
    text = "\n".join(["# Sweep summary", "", *table, "", *notes,
                      *([f"", f"![eval loss against training rows]({plot.name})"] if plot else [])]) + "\n"
    write_atomic(sweep_dir / "sweep.md", text)
    out("\n".join(["", "sweep summary:", *table, *notes,
                   f"wrote {sweep_dir / 'sweep.md'}, sweep.csv" + (", sweep.png" if plot else "")]))
    return {"rows": rows, "best": best, "comparable": comparable, "plot": plot}


def plot_losses(rows, path: Path) -> Path | None:
    pts = sorted((r["train rows"], r["eval loss after"], r["eval loss before"], r["point"]) for r in rows
                 if r["eval loss after"] is not None and r["train rows"])
    if not pts:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    x = [p[0] for p in pts]
    ax.plot(x, [p[1] for p in pts], "o-", label="eval loss after training")
    before = [(p[0], p[2]) for p in pts if p[2] is not None]
    if before:
        ax.plot(*zip(*before), "x--", color="grey", label="eval loss before training")
    for n, loss, _, name in pts:
        ax.annotate(name, (n, loss), textcoords="offset points", xytext=(4, 6), fontsize=7)
    ax.margins(x=0.15, y=0.12)
    if x[-1] > 10 * max(x[0], 1):
        ax.set_xscale("log")
    ax.set_xlabel("training rows")
    ax.set_ylabel("eval loss (same eval rows for every point)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


# ---- MLflow: one parent run per sweep -------------------------------------------------------------

def tracking_uri(spec) -> str:
    root = Path(spec["run"]["output_root"]).resolve()
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


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

def start_parent(spec, sweep_dir: Path, prev: dict, overrides: list[str], points: int) -> dict:
    """The sweep's MLflow run, which each point's training run names as its parent; a re-run of the same sweep
    (prev: its record) reuses it while it is still in the store."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from trainer import tracking
    import mlflow

    uri, experiment = tracking_uri(spec), spec["run"]["experiment_name"]
    client = mlflow.MlflowClient(uri)
    if prev.get("tracking_uri") == uri and prev.get("parent_run_id"):
        try:
            client.get_run(prev["parent_run_id"])
            return {"tracking_uri": uri, "run_id": prev["parent_run_id"]}
        except Exception:  # the store was replaced since: a new parent
            pass
    what = " ".join(shown(overrides))
    run = client.create_run(tracking.use_experiment(uri, experiment), run_name=f"{spec['run']['name']} sweep: {what}",
                            tags={"runner.sweep_dir": str(Path(sweep_dir).resolve()), "runner.sweep": what,
                                  "runner.points": str(points)})
    return {"tracking_uri": uri, "run_id": run.info.run_id}


def end_parent(parent: dict, summary: dict, sweep_dir: Path, ok: bool):
    """Log the summary's files to the parent run and close it."""
    import mlflow

    from trainer import tracking
    client = mlflow.MlflowClient(parent["tracking_uri"])
    for name in ("sweep.md", "sweep.csv", "sweep.png"):
        if (Path(sweep_dir) / name).is_file():
            tracking.best_effort("log the sweep summary", client.log_artifact, parent["run_id"], str(Path(sweep_dir) / name))
    best = summary.get("best")
    if best:
        tracking.best_effort("log the best point", client.set_tag, parent["run_id"], "runner.best_point", best["point"])
        tracking.best_effort("log the best eval loss", client.log_metric, parent["run_id"], "best_eval_loss",
                             float(best["eval loss after"]))
    tracking.best_effort("close the sweep's run", client.set_terminated, parent["run_id"],
                         status="FINISHED" if ok else "FAILED")
