"""train (local): fine-tune on the data stage's JSONL with `trainer`: in this process, or with
compute.processes_per_instance > 1 (auto: one per visible GPU) under torchrun, running the Azure job's own command
line, `python -m trainer ...`, once per process."""

import json
import os
import sys
from pathlib import Path

from .. import REPO_ROOT
from ..errors import StageFailed, UserError
from ..rundir import run_name
from ..spec import hardware
from ..spec.memory_fit import attention_line, memory_line, sharding_line
from ..stages import template_audit

KEEP = (
    "run_id",
    "model_uri",
    "tracking_uri",
    "experiment",
    "mlflow_model_dir",
    "loss_plot",
    "steps",
    "train_loss",
    "eval_loss",
    "eval_loss_before",
    "tokens_per_s",
    "rows_truncated",
    "train_runtime_s",
    "device",
    "processes",
    "sharding",
    "base_model",
    "rows_cut_before_stop",
)


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
    processes = hardware.processes_per_instance(spec["compute"])
    if processes > 1:
        summary = launch(spec, ctx, processes, data, out, root)
    else:
        try:
            summary = train(
                spec,
                ctx.run_dir / "spec.yaml",
                Path(data["train_file"]),
                Path(data["test_file"]),
                out,
                tracking_uri=store_uri(spec),
                cache_dir=root / "cache",
                log=ctx.log,
                mlflow_run=mlflow_run(spec, ctx),
                tiny_corpus=data.get("pool_file") and Path(data["pool_file"]),
            )
        except TrainerInputError as exc:
            raise UserError(str(exc)) from None
    return {
        "output_dir": str(out),
        **{k: summary.get(k) for k in KEEP},
        "eval_sha256": (data.get("sha256") or {}).get("test.jsonl"),
    }  # the eval rows these losses are on (sweep summaries)


def trainer_command(spec, ctx, processes: int, data: dict, out: Path, root: Path) -> list[str]:
    """torchrun around the trainer's command line, as the Azure job runs it (python -m trainer --spec ...)."""
    run = mlflow_run(spec, ctx)
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "trainer",
        "--spec",
        str(ctx.run_dir / "spec.yaml"),
        "--train-file",
        str(data["train_file"]),
        "--eval-file",
        str(data["test_file"]),
        "--output-dir",
        str(out),
        "--tracking-uri",
        store_uri(spec),
        "--cache-dir",
        str(root / "cache"),
        "--run-name",
        run["run_name"],
    ]
    argv += [a for k, v in run["tags"].items() for a in ("--tag", f"{k}={v}")]
    if run["parent_run_id"]:
        argv += ["--parent-run-id", run["parent_run_id"]]
    if data.get("pool_file"):
        argv += ["--tiny-corpus", str(data["pool_file"])]
    return argv


def _die_with_parent():
    """In the torchrun child: SIGTERM it when the runner dies, however it dies (a SIGKILL included); torchrun then
    stops its workers, so a killed run leaves no training behind to race its re-run."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def launch(spec, ctx, processes: int, data: dict, out: Path, root: Path) -> dict:
    """Train with processes processes on this machine under torchrun; the summary rank 0 wrote.

    Their output passes through as it comes (rank 0 logs; the others only warn). A trainer's refusal of its input
    (error: ..., status 2) is this stage's UserError, anything else a failed stage with the end of the output.
    """
    import subprocess

    device = "GPUs (NCCL)" if hardware.visible() and spec["compute"]["device"] != "cpu" else "the CPU (gloo)"
    ctx.log(
        f"[train] {processes} processes on this machine, on {device}: torchrun --standalone "
        f"--nproc_per_node={processes} -m trainer ... (the Azure job's command line)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    import codecs

    decode, tail = codecs.getincrementaldecoder("utf-8")("replace"), ""
    with subprocess.Popen(
        trainer_command(spec, ctx, processes, data, out, root),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO_ROOT,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    ) as proc:
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):
            text = decode.decode(chunk)
            sys.stdout.write(text)
            sys.stdout.flush()
            tail = (tail + text)[-65536:]
    text = tail
    if proc.returncode != 0:
        refused = [line.split("error: ", 1)[1] for line in text.splitlines() if line.startswith("error: ")]
        if refused:
            raise UserError(refused[0])
        raise StageFailed(
            f"training with {processes} processes failed (torchrun exit status {proc.returncode}):\n"
            + "\n".join(text.splitlines()[-30:])
        )
    summary = json.loads((out / "summary.json").read_text())
    ctx.log(f"[train] {processes} processes trained ({summary.get('sharding')}); rank 0 recorded the model")
    return summary


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
    shaped = "Phi-4-mini" if (m.get("tiny") or {}).get("arch") == "phi4mini" else "Phi-3"
    base = f"a tiny {shaped} built locally (no download)" if m["source"] == "tiny" else m["id"]
    return [
        f"model:  {base}; {t['num_train_epochs']} epochs, lr {t['learning_rate']}, "
        f"{spec['compute']['precision']} on {spec['compute']['device']}",
        f"mlflow: {store_uri(spec)}, experiment {spec['run']['experiment_name']} (MLFLOW_TRACKING_URI wins)",
        sharding_line(spec),
        memory_line(spec),
        attention_line(spec),
        *template_audit.plan_lines(spec, ctx),
    ]
