"""MLflow: where runs go, what they record, and how the model is logged for serving."""

import json
import os
import time
from pathlib import Path

from common.generation import PARAMS

from .files import pinned_requirements


def point_at(uri: str, registry: bool = False):
    """mlflow.set_tracking_uri (and set_registry_uri) without their side effect of exporting MLFLOW_*_URI to this
    process's environment, where the next run (a later sweep point, a child process) would take it for the user's."""
    import mlflow

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    before = {n: os.environ.get(n) for n in names}
    mlflow.set_tracking_uri(uri)
    if registry:
        mlflow.set_registry_uri(uri)
    for n, value in before.items():
        if value is None:
            os.environ.pop(n, None)
        else:
            os.environ[n] = value


def tracking_uri(cli_value: str | None, output_dir: Path) -> str:
    """MLFLOW_TRACKING_URI set by the user (or Azure ML) wins; else the given one; else SQLite beside the output."""
    return os.environ.get("MLFLOW_TRACKING_URI") or cli_value or f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


def use_experiment(uri: str, experiment: str) -> str:
    """Point MLflow at uri and experiment (made when missing); returns the experiment's id."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    point_at(uri)
    if uri.startswith("sqlite:///") and mlflow.get_experiment_by_name(experiment) is None:
        # a SQLite store would put artifacts in ./mlruns of whatever directory we run in: pin them beside the db
        artifacts = Path(uri[len("sqlite:///") :]).parent / "mlartifacts"
        mlflow.create_experiment(experiment, artifact_location=artifacts.resolve().as_uri())
    return mlflow.set_experiment(experiment).experiment_id


def start(
    uri: str,
    experiment: str,
    resume_file: Path,
    run_name: str | None = None,
    tags: dict | None = None,
    parent_run_id: str | None = None,
):
    """Start (or, after a crash, resume) the MLflow run of this training.

    run_name and tags say what the run is (the runner passes its run directory); parent_run_id nests it under a
    sweep's run.
    """
    import mlflow

    if os.environ.get("MLFLOW_RUN_ID"):  # inside an Azure ML job the run already exists
        point_at(uri)
        return mlflow.start_run()
    use_experiment(uri, experiment)
    if resume_file.exists():
        prev = json.loads(resume_file.read_text())
        if prev.get("tracking_uri") == uri:
            return mlflow.start_run(run_id=prev["run_id"])
    tags = {**(tags or {}), **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
    run = mlflow.start_run(run_name=run_name, tags=tags or None)
    resume_file.write_text(json.dumps({"run_id": run.info.run_id, "tracking_uri": uri}))
    return run


def flatten(d: dict, prefix="") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if not isinstance(v, list) else json.dumps(v, ensure_ascii=False)
    return out


def log_spec(spec: dict, spec_path: Path):
    import mlflow

    params = {k: v for k, v in flatten(spec).items() if not k.startswith("azure.")}  # no workspace ids in params
    mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
    mlflow.log_artifact(str(spec_path))


def loss_plot(log_history: list, path: Path, eval_before: float | None = None) -> Path | None:
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    if eval_before is not None:  # measured before train() started a fresh log history
        evals.insert(0, (0, eval_before))
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    # the generation settings a caller may send with each request: declared so MLflow's serving honours them;
    # return_full_text too, which the tutorial's payload sends
    params = [ParamSpec(n, t, d) for n, (_, t, d) in PARAMS.items()] + [ParamSpec("return_full_text", "boolean", False)]
    return ModelSignature(
        inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]), params=ParamSchema(params)
    )


def prompt_template(tokenizer) -> str:
    """The chat template around one user turn, as MLflow's prompt_template: '...{prompt}...'.

    With it, MLflow's own consumers (mlflow models serve, pyfunc predict, Azure's no-code MLflow deployment) put a
    string prompt in the chat format and return only the answer, as the scoring script does; without it they pass
    the bare string, and a chat model ends at once.
    """
    mark = "\x00prompt\x00"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": mark}], add_generation_prompt=True, tokenize=False
    )
    return text.replace("{", "{{").replace("}", "}}").replace(mark, "{prompt}")


def _model_args(model, tokenizer) -> dict:
    import logging

    # offline, mlflow warns that it cannot fetch a model card or license for a local model: expected here
    logging.getLogger("mlflow.transformers").setLevel(logging.ERROR)
    return dict(
        transformers_model={"model": model, "tokenizer": tokenizer},
        task="text-generation",
        prompt_template=prompt_template(tokenizer),
        signature=signature(),
        pip_requirements=pinned_requirements(),
    )  # explicit: inferring them imports torchvision


def save_model(model, tokenizer, path: Path) -> Path:
    """Write the MLflow model folder to path without the tracking server: what an Azure ML job registers.

    Azure ML's tracking server answers MLflow 3's logged-model calls with 404, so log_model cannot be used there.
    """
    import shutil

    import mlflow

    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    mlflow.transformers.save_model(path=str(tmp), **_model_args(model, tokenizer))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def best_effort(what: str, fn, *args, **kwargs):
    """Call fn; a failure is a warning, not the end of the run (for what is optional once the model is saved)."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # the tracking server's errors come in many types
        print(f"warning: could not {what}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        return None


def log_model(model, tokenizer, local_copy: Path) -> str:
    """Log a text-generation model; keep a copy of the MLflow model folder in local_copy. Returns its URI."""
    import mlflow

    info = mlflow.transformers.log_model(name="model", **_model_args(model, tokenizer))
    if local_copy.exists():
        import shutil

        shutil.rmtree(local_copy)
    mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri, dst_path=str(local_copy))
    return info.model_uri


def eta(t0: float, step0: int, step: int, max_steps: int, now: float | None = None) -> str:
    """', about 1m20s left' at the pace since t0 (when step0 was done); nothing before a step is done or after the
    last one."""
    done, left = step - step0, max_steps - step
    if done <= 0 or left <= 0:
        return ""
    seconds = round(((now if now is not None else time.monotonic()) - t0) / done * left)
    h, rest = divmod(seconds, 3600)
    m, sec = divmod(rest, 60)
    shown = f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"
    return f", about {shown} left"


def progress_callback():
    """A progress bar for training steps, with a short loss line at each logging step; metrics go to MLflow."""
    from transformers.trainer_callback import ProgressCallback

    class LossLines(ProgressCallback):
        started: tuple = (0.0, 0)  # (time, step) when training began (or resumed)

        def on_train_begin(self, args, state, control, **kw):
            self.started = (time.monotonic(), state.global_step)
            return super().on_train_begin(args, state, control, **kw)

        def on_prediction_step(self, *a, **kw):
            pass  # no nested bar for each evaluation

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            bits = [f"{k} {logs[k]:.4g}" for k in ("loss", "eval_loss", "learning_rate") if k in logs]
            if bits and state.is_world_process_zero and state.max_steps:
                line = f"[train] step {state.global_step}/{state.max_steps} epoch {state.epoch or 0:.1f}: " + ", ".join(
                    bits
                )
                line += eta(*self.started, state.global_step, state.max_steps)
                (self.training_bar.write if self.training_bar is not None else print)(line)
            numbers = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
            if numbers and state.is_world_process_zero:
                import mlflow

                if mlflow.active_run() is not None:  # none when fit() runs without recording (the benchmark)
                    best_effort("log metrics", mlflow.log_metrics, numbers, step=state.global_step)

    return LossLines()
