"""Fine-tune with TRL's SFTTrainer, checkpointing as it goes, then log the model to MLflow."""

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from common.files import write_atomic

from . import audit, chats, distributed, memory, tracking
from .errors import TrainerInputError
from .files import last_complete_checkpoint
from .hub import base_model_dir, fit_embeddings, go_offline_unless_reachable, load_tokenizer, stop_ids


def resolve_device(compute: dict) -> str:
    import torch

    if compute["device"] == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if compute["device"] == "cuda" and not torch.cuda.is_available():
        raise TrainerInputError("compute.device is cuda but no GPU is visible; use compute=local compute.device=cpu")
    return compute["device"]


def sft_config(spec: dict, checkpoints: Path, precision: str, device: str, sharded: bool = False):
    """train.* keys are SFTConfig's own argument names, passed through as they are; fsdp and fsdp_config only when
    the run is sharded (train.fsdp=auto is decided by memory.sharding, not by the library)."""
    from trl import SFTConfig

    t = {k: v for k, v in spec["train"].items() if k not in ("lora", "fsdp", "fsdp_config")}
    if sharded:
        t.update(distributed.fsdp_arguments(spec["train"].get("fsdp_config"), t["activation_checkpointing"]))
    if "activation_checkpointing" not in SFTConfig.__dataclass_fields__:
        # transformers before 5.2x (e.g. in GPU images) knows only the old name
        t["gradient_checkpointing"] = t.pop("activation_checkpointing")
    return SFTConfig(
        output_dir=str(checkpoints),
        **t,
        data_seed=t["seed"],
        save_strategy="steps",
        bf16=precision in ("bf16", "bf16-mixed"),
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        report_to="none",
        dataloader_num_workers=0,
        dataset_num_proc=None,
        disable_tqdm=False,
        logging_first_step=True,
    )


def lora_config(spec: dict):
    """train.lora.* keys (but `enabled`) are peft's LoraConfig arguments."""
    lora = dict(spec["train"]["lora"])
    if not lora.pop("enabled"):
        return None
    from peft import LoraConfig

    return LoraConfig(**lora, task_type="CAUSAL_LM")


@dataclass
class Job:
    """What train() set up: the SFTTrainer and the facts its summary reports."""

    trainer: object
    tokenizer: object
    device: str
    precision: str
    base: str
    tokens_per_epoch: int
    truncated: int
    train_rows: int
    eval_rows: int
    resume_from: str | None
    processes: int = 1
    sharded: bool = False
    sharding: str = ""
    cut_before_stop: int = 0  # training rows max_length cuts inside an answer, before its end-of-turn token


def setup(
    spec: dict,
    train_file: Path,
    eval_file: Path,
    output_dir: Path,
    checkpoints: Path,
    cache_dir: Path | None,
    log,
    tiny_corpus: Path | None = None,
    spec_path: Path | None = None,
) -> Job:
    """Check the inputs, then build the model, tokenizer and SFTTrainer. Writes nothing before the checks pass."""
    go_offline_unless_reachable()  # before any huggingface import: offline means no retry loops
    train_rows, eval_rows = chats.load(train_file), chats.load(eval_file)
    device = resolve_device(spec["compute"])
    precision = spec["compute"]["precision"]
    if precision == "fp16" and device == "cpu":
        # bf16 and bf16-mixed run on the CPU (natively with AVX-512 BF16 or AMX, bench/precision.py uses it); fp16 does not
        raise TrainerInputError("compute.precision=fp16 needs a GPU; this run is on the CPU: use bf16 or fp32")
    # the tiny model's tokenizer is learnt from its training rows, or from tiny_corpus: the rows every point of a
    # sweep could train on, so all points start from one base model and their eval losses count the same tokens
    corpus = chats.load(tiny_corpus) if tiny_corpus and spec["model"]["source"] == "tiny" else train_rows
    base = base_model_dir(spec, corpus, Path(cache_dir or output_dir / "cache"))
    tokenizer = load_tokenizer(base, spec, spec_path)
    audited = audit.for_training(spec["train"], tokenizer, stop_ids(base), train_rows)
    if audited.problems:
        raise TrainerInputError(audit.refusal(audited))
    output_dir.mkdir(parents=True, exist_ok=True)  # only once the inputs are known to be usable
    if distributed.is_main():  # with several processes, rank 0 alone writes
        write_atomic(output_dir / "template_audit.txt", audited.report + "\n")
    log(
        f"[train] {audited.summary(spec['train']['max_length'])}\n[train] the first chat as it is trained (loss on "
        f"the tokens in \u27e6 \u27e7; the first {min(len(train_rows), 3)} in {output_dir / 'template_audit.txt'}):\n"
        f"{audit.terminal(audited.first)}"
    )

    import datasets
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from transformers.trainer_callback import ProgressCallback
    from trl import SFTTrainer

    datasets.disable_progress_bars()  # TRL's map passes would print four bars per split
    # bf16: bf16 weights and optimizer state; bf16-mixed: fp32 master weights, bf16 autocast (updates below bf16's
    # resolution still land: bench/train_recipes.py --precision-check measures it)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "bf16-mixed": torch.float32}[
        precision
    ]
    model = fit_embeddings(
        AutoModelForCausalLM.from_pretrained(
            base, dtype=dtype, attn_implementation=spec["model"]["attn_implementation"]
        ),
        tokenizer,
    )
    # training never reuses a KV cache, and with one transformers does not look for the boundaries of packed rows:
    # packed chats would attend to each other (tests/unit/test_packing.py); record() turns it back on for serving
    model.config.use_cache = False

    lengths = chats.token_lengths(train_rows, tokenizer)
    max_len = spec["train"]["max_length"]
    truncated = sum(n > max_len for n in lengths)
    if truncated:
        log(f"[train] {truncated} of {len(lengths)} training rows exceed max_length={max_len} tokens and are truncated")
    processes = distributed.world_size()
    gpu_gib = torch.cuda.get_device_properties(0).total_memory / memory.GIB if device == "cuda" else None
    sharded, why = memory.sharding(spec, processes, gpu_gib)
    if processes > 1:
        log(f"[train] {processes} processes ({'NCCL' if device == 'cuda' else 'gloo on the CPU'}): {why}")
    args = sft_config(spec, checkpoints, precision, device, sharded)
    with distributed.fsdp_on_the_cpu(device, sharded):
        trainer = SFTTrainer(
            model=model,
            args=args,
            processing_class=tokenizer,
            peft_config=lora_config(spec),
            train_dataset=Dataset.from_list(train_rows),
            eval_dataset=Dataset.from_list(eval_rows),
        )
    mismatch = audit.confirm(trainer, audited, max_len)
    if mismatch:
        raise TrainerInputError(audit.refusal(audit.Audit(mismatch, 0, 0, [], "", "", [])))
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(tracking.progress_callback())
    last = last_complete_checkpoint(Path(args.output_dir), log)
    return Job(
        trainer,
        tokenizer,
        device,
        precision,
        base,
        sum(min(n, max_len) for n in lengths),
        truncated,
        len(train_rows),
        len(eval_rows),
        last,
        processes,
        sharded,
        why,
        audited.cut_before_stop,
    )


def fit(job: Job, epochs: float, main: bool, log, before_file: Path | None = None) -> dict:
    """Evaluate (unless resuming: before_file keeps the first attempt's), train, evaluate again; every rank's metrics."""
    measured = {}

    def evaluate_before():
        measured["before"] = before = job.trainer.evaluate()["eval_loss"]
        if main:
            import mlflow

            tracking.best_effort("log eval_loss_before", mlflow.log_metric, "eval_loss_before", before, step=0)
            if before_file:
                write_atomic(before_file, json.dumps({"eval_loss_before": before}))
        log(f"[train] eval loss before training: {before:.4f}")

    if job.resume_from is not None:
        log(f"[train] resuming from {job.resume_from}")
        if before_file and before_file.is_file():
            measured["before"] = json.loads(before_file.read_text())["eval_loss_before"]
    elif job.sharded:
        # FSDP2: accelerate shards the model together with its optimizer when training starts and refuses to
        # prepare it alone for an evaluation before that; so the first evaluation runs as training begins
        job.trainer.add_callback(distributed.at_train_begin(evaluate_before))
    else:
        evaluate_before()
    t0 = time.time()
    result = job.trainer.train(resume_from_checkpoint=job.resume_from)
    seconds = time.time() - t0
    before = measured.get("before")
    return {
        "eval_loss_before": before,
        "eval_loss": job.trainer.evaluate()["eval_loss"],
        "train_loss": result.training_loss,
        "train_runtime_s": seconds,
        "tokens_per_s": job.tokens_per_epoch * epochs / max(seconds, 1e-9),
        "rows_truncated": job.truncated,
        "rows_cut_before_stop": job.cut_before_stop,
        "train_rows": job.train_rows,
        "eval_rows": job.eval_rows,
        "steps": job.trainer.state.global_step,
    }


def record(job: Job, metrics: dict, output_dir: Path, save_only: bool, final=None) -> dict:
    """Rank 0 only: the model first, then the final metrics and the loss plot, into the active MLflow run.

    final: the whole trained model (whole_model(), which every rank calls). save_only (the Azure ML job): the model
    is written with save_model into <output_dir>/mlflow_model, which the workspace registers; nothing after it can
    lose the finished training.
    """
    import mlflow

    final = job.trainer.model if final is None else final
    if hasattr(final, "merge_and_unload"):
        final = final.merge_and_unload()  # LoRA: serve one plain model, no adapter plumbing
    final.config.use_cache = True
    if save_only:
        model_uri = None
        tracking.save_model(final, job.tokenizer, output_dir / "mlflow_model")
    else:
        model_uri = tracking.log_model(final, job.tokenizer, output_dir / "mlflow_model")
    tracking.best_effort(
        "log the final metrics",
        mlflow.log_metrics,
        {f"final_{k}": float(v) for k, v in metrics.items() if v is not None},
    )
    plot = tracking.loss_plot(job.trainer.state.log_history, output_dir / "loss.png", metrics["eval_loss_before"])
    if plot:
        tracking.best_effort("log the loss plot", mlflow.log_artifact, str(plot))
    return {
        "model_uri": model_uri,
        "mlflow_model_dir": str(output_dir / "mlflow_model"),
        "loss_plot": str(plot) if plot else None,
    }


def train(
    spec: dict,
    spec_path: Path,
    train_file: Path,
    eval_file: Path,
    output_dir: Path,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    cache_dir: Path | None = None,
    log=print,
    checkpoint_dir: Path | None = None,
    save_model_only: bool = False,
    mlflow_run: dict | None = None,
    tiny_corpus: Path | None = None,
    eval_dir: Path | None = None,
) -> dict:
    """Set up, fit, record. The same summary shape on every rank; only rank 0 records to MLflow and logs the model.

    checkpoint_dir: where checkpoints go (default <output_dir>/checkpoints); a re-run resumes from the last one.
    save_model_only: write the model folder instead of logging it to the tracking server (the Azure ML job).
    mlflow_run: run_name, tags and parent_run_id of a new MLflow run (what it is, and the sweep it belongs to).
    tiny_corpus: JSONL chats the tiny model's tokenizer is learnt from (default: the training rows).
    eval_dir: also compare the trained model with its base on the eval rows (trainer/evaluate.py) into this folder.
    """
    output_dir = Path(output_dir)
    checkpoints = Path(checkpoint_dir or output_dir / "checkpoints")
    # with several processes (torchrun / Azure ML's PyTorch distribution) all train, rank 0 alone records and logs
    main = distributed.is_main()
    if not main:
        log = lambda *_: None  # noqa: E731
    job = setup(spec, train_file, eval_file, output_dir, checkpoints, cache_dir, log, tiny_corpus, spec_path)
    experiment = experiment or spec["run"]["experiment_name"]
    uri = tracking.tracking_uri(tracking_uri, output_dir)
    summary = {
        "run_id": None,
        "model_uri": None,
        "mlflow_model_dir": None,
        "loss_plot": None,
        "tracking_uri": uri,
        "experiment": experiment,
        "device": job.device,
        "precision": job.precision,
        "base_model": job.base,
        "processes": job.processes,
        "sharding": "fsdp2" if job.sharded else "ddp" if job.processes > 1 else None,
    }
    with (
        tracking.start(uri, experiment, output_dir / "mlflow_run.json", **(mlflow_run or {}))
        if main
        else contextlib.nullcontext() as run
    ):
        if main and job.resume_from is None:
            tracking.best_effort("log the run spec", tracking.log_spec, spec, Path(spec_path))
        metrics = fit(job, spec["train"]["num_train_epochs"], main, log, output_dir / "eval_loss_before.json")
        summary.update(metrics)
        final = distributed.whole_model(job)  # sharded: every rank takes part; rank 0 gets the model
        if main:
            summary.update(run_id=run.info.run_id, **record(job, metrics, output_dir, save_model_only, final))
            if eval_dir is not None and spec.get("eval"):  # the Azure job: the base model is on this node already
                from .evaluate import after_training

                summary["eval"] = after_training(spec, job.base, job.tokenizer, final, eval_file, Path(eval_dir), log)
    if main:
        write_atomic(output_dir / "summary.json", json.dumps(summary, indent=2))
    before = summary["eval_loss_before"]
    log(
        f"[train] finished: {summary['steps']} steps in {summary['train_runtime_s']:.1f}s, "
        f"{summary['tokens_per_s']:.0f} tokens/s, train loss {summary['train_loss']:.4f}, eval loss "
        f"{summary['eval_loss']:.4f}"
        + (f" (was {before:.4f})" if before is not None else "")
        + (f"; model {summary['model_uri'] or summary['mlflow_model_dir']}" if main else "")
    )
    return summary
