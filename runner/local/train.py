"""train (local): fine-tune on the data stage's JSONL with `trainer`, in this process."""
from pathlib import Path

from ..errors import UserError
from ..spec.rules import memory_line

KEEP = ("run_id", "model_uri", "tracking_uri", "experiment", "mlflow_model_dir", "loss_plot", "steps",
        "train_loss", "eval_loss", "eval_loss_before", "tokens_per_s", "rows_truncated", "train_runtime_s", "device")


def output_root(spec) -> Path:
    return Path(spec["run"]["output_root"]).resolve()


def store_uri(spec) -> str:
    """The runs' MLflow store: SQLite beside the run directories (the trainer lets MLFLOW_TRACKING_URI win)."""
    return f"sqlite:///{output_root(spec) / 'mlflow.db'}"


def run(spec, ctx):
    from trainer.errors import TrainerInputError
    from trainer.fit import train
    data = ctx.upstream("data")
    root = output_root(spec)
    root.mkdir(parents=True, exist_ok=True)
    # one folder per set of inputs: a re-run after a crash resumes from its checkpoints, a changed recipe starts fresh
    out = ctx.run_dir / "train" / ctx.inputs_hash
    if spec["force"] or ctx.previous.get("status") == "done":
        fresh_start(out)  # resuming is for an attempt that was killed or failed, not for redoing a finished one
    try:
        summary = train(spec, ctx.run_dir / "spec.yaml", Path(data["train_file"]), Path(data["test_file"]), out,
                        tracking_uri=store_uri(spec), cache_dir=root / "cache", log=ctx.log,
                        mlflow_run=mlflow_run(spec, ctx), tiny_corpus=data.get("pool_file") and Path(data["pool_file"]))
    except TrainerInputError as exc:
        raise UserError(str(exc)) from None
    return {"output_dir": str(out), **{k: summary.get(k) for k in KEEP},
            "eval_sha256": (data.get("sha256") or {}).get("test.jsonl")}  # the eval rows these losses are on (sweep summaries)


def run_name(spec, run_dir: Path) -> str:
    """What the run is: its run directory under run.output_root, e.g. default/local_tiny_sample/data.percent=25."""
    run_dir, root = Path(run_dir).resolve(), output_root(spec)
    return str(run_dir.relative_to(root)) if root in run_dir.parents else run_dir.name


def mlflow_run(spec, ctx) -> dict:
    tags = {"runner.run_dir": str(Path(ctx.run_dir).resolve()), "runner.run": spec["run"]["name"]}
    if ctx.point.get("name"):
        tags["runner.point"] = ctx.point["name"]
    return {"run_name": run_name(spec, ctx.run_dir), "tags": tags, "parent_run_id": ctx.point.get("parent_run_id")}


def fresh_start(out: Path):
    import shutil
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    (out / "mlflow_run.json").unlink(missing_ok=True)


def is_current(outputs, spec, ctx) -> bool:
    return (Path(outputs.get("mlflow_model_dir", "")) / "MLmodel").is_file()


def plan(spec, ctx):
    m, t = spec["model"], spec["train"]
    base = "a tiny Phi-3 built locally (no download)" if m["source"] == "tiny" else m["id"]
    return [f"model:  {base}; {t['num_train_epochs']} epochs, lr {t['learning_rate']}, "
            f"{spec['compute']['precision']} on {spec['compute']['device']}",
            f"mlflow: {store_uri(spec)}, experiment {spec['run']['experiment_name']} "
            "(MLFLOW_TRACKING_URI wins)", memory_line(spec)]
