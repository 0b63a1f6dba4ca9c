"""Fine-tune with TRL's SFTTrainer, checkpointing as it goes, then log the model to MLflow."""
import contextlib
import json
import os
import time
from pathlib import Path

from . import chats, tracking
from .errors import TrainerInputError
from .hub import go_offline_unless_reachable


def resolve_device(compute: dict) -> str:
    import torch
    if compute["device"] == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if compute["device"] == "cuda" and not torch.cuda.is_available():
        raise TrainerInputError("compute.device is cuda but no GPU is visible; use compute=local compute.device=cpu")
    return compute["device"]


def base_model_dir(spec: dict, train_rows, cache_dir: Path) -> str:
    """Folder or hub id of the base model; a clear error when its weights are not on this machine."""
    model = spec["model"]
    if model["source"] == "tiny":
        from .tiny import build_or_load
        return str(build_or_load(train_rows, model["tiny"], cache_dir))
    ident = model["id"]
    looks_local = ident.startswith((".", "/", "~")) or Path(ident).expanduser().exists()
    if looks_local:
        path = Path(ident).expanduser()
        if not (path / "config.json").is_file():
            raise TrainerInputError(f"model.id: {path} is not a model folder (no config.json there); "
                                    "point model.id at a folder written by save_pretrained")
        return str(path)
    from huggingface_hub import snapshot_download
    online = go_offline_unless_reachable()
    try:
        return snapshot_download(ident, local_files_only=not online,
                                 allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.py", "*.jinja"])
    except Exception as exc:
        if online:
            raise TrainerInputError(f"could not fetch {ident} from the hub: {exc}") from None
        raise TrainerInputError(
            f"the weights of {ident} are not available locally and the hub cannot be reached: download them on a "
            f"machine with access (hf download {ident}) into this machine's Hugging Face cache, or set "
            "model.id=/path/to/a/local/copy") from None


def progress_callback():
    """A progress bar for training steps, with a short loss line at each logging step; metrics go to MLflow."""
    from transformers.trainer_callback import ProgressCallback

    class LossLines(ProgressCallback):
        def on_prediction_step(self, *a, **kw):
            pass  # no nested bar for each evaluation

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            bits = [f"{k} {logs[k]:.4g}" for k in ("loss", "eval_loss", "learning_rate") if k in logs]
            if bits and state.is_world_process_zero and state.max_steps:
                line = f"[train] step {state.global_step}/{state.max_steps} epoch {state.epoch or 0:.1f}: " + ", ".join(bits)
                (self.training_bar.write if self.training_bar is not None else print)(line)
            numbers = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
            if numbers and state.is_world_process_zero:
                import mlflow
                mlflow.log_metrics(numbers, step=state.global_step)

    return LossLines()


def sft_config(spec: dict, out: Path, precision: str, device: str):
    from trl import SFTConfig

    t = spec["train"]
    # transformers 5.2x renamed gradient_checkpointing; older releases (e.g. in GPU images) only know the old name
    ckpt = "activation_checkpointing" if "activation_checkpointing" in SFTConfig.__dataclass_fields__ else "gradient_checkpointing"
    return SFTConfig(
        output_dir=str(out / "checkpoints"), learning_rate=t["learning_rate"], num_train_epochs=t["epochs"],
        per_device_train_batch_size=t["per_device_train_batch_size"],
        per_device_eval_batch_size=t["per_device_eval_batch_size"],
        gradient_accumulation_steps=t["gradient_accumulation_steps"], warmup_steps=t["warmup"],
        lr_scheduler_type=t["lr_scheduler"], max_length=t["max_length"], packing=t["packing"],
        packing_strategy=t["packing_strategy"], **{ckpt: t["gradient_checkpointing"]},
        logging_steps=t["logging_steps"], save_strategy="steps", save_steps=t["save_steps"],
        save_total_limit=t["save_total_limit"], eval_strategy=t["eval_strategy"], seed=t["seed"], data_seed=t["seed"],
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=device == "cpu", report_to="none",
        dataloader_num_workers=0, dataset_num_proc=None, disable_tqdm=False, logging_first_step=True,
    )


def train(spec: dict, spec_path: Path, train_file: Path, eval_file: Path, output_dir: Path,
          tracking_uri: str | None = None, experiment: str = "finetune-phi", cache_dir: Path | None = None,
          log=print) -> dict:
    go_offline_unless_reachable()  # before any huggingface import: offline means no retry loops
    output_dir = Path(output_dir)
    train_rows, eval_rows = chats.load(train_file), chats.load(eval_file)
    device = resolve_device(spec["compute"])
    precision = spec["compute"]["precision"]
    if precision != "fp32" and device == "cpu":
        raise TrainerInputError(f"compute.precision={precision} needs a GPU; this run is on the CPU")
    base = base_model_dir(spec, train_rows, Path(cache_dir or output_dir / "cache"))
    output_dir.mkdir(parents=True, exist_ok=True)  # only once the inputs are known to be usable

    import datasets
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTTrainer

    datasets.disable_progress_bars()  # TRL's map passes would print four bars per split
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, attn_implementation=spec["model"]["attn_implementation"])
    model.config.use_cache = not spec["train"]["gradient_checkpointing"]

    lengths = chats.token_lengths(train_rows, tokenizer)
    max_len = spec["train"]["max_length"]
    truncated = sum(n > max_len for n in lengths)
    if truncated:
        log(f"[train] {truncated} of {len(lengths)} training rows exceed max_length={max_len} tokens and are truncated")

    args = sft_config(spec, output_dir, precision, device)
    peft_config = None
    if spec["train"]["lora"]["enabled"]:
        from peft import LoraConfig
        lora = spec["train"]["lora"]
        peft_config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                 target_modules=lora["target_modules"], task_type="CAUSAL_LM")

    last = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    uri = tracking.tracking_uri(tracking_uri, output_dir)
    # with several processes (torchrun / Azure ML's PyTorch distribution) all train, rank 0 alone records
    main = int(os.environ.get("RANK", "0")) == 0
    with tracking.start(uri, experiment, output_dir / "mlflow_run.json") if main else contextlib.nullcontext() as run:
        import mlflow
        if main and last is None:
            tracking.log_spec(spec, Path(spec_path))
        trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer, peft_config=peft_config,
                             train_dataset=Dataset.from_list(train_rows), eval_dataset=Dataset.from_list(eval_rows),
                             )
        from transformers.trainer_callback import ProgressCallback
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(progress_callback())
        if last is None:
            before = trainer.evaluate()["eval_loss"]
            if main:
                mlflow.log_metric("eval_loss_before", before, step=0)
                log(f"[train] eval loss before training: {before:.4f}")
        else:
            before = None
            log(f"[train] resuming from {last}")
        t0 = time.time()
        result = trainer.train(resume_from_checkpoint=last)
        seconds = time.time() - t0
        after = trainer.evaluate()["eval_loss"]
        tokens = sum(min(n, max_len) for n in lengths) * spec["train"]["epochs"]
        metrics = {"eval_loss": after, "train_loss": result.training_loss, "train_runtime_s": seconds,
                   "tokens_per_s": tokens / max(seconds, 1e-9), "rows_truncated": truncated,
                   "train_rows": len(train_rows), "eval_rows": len(eval_rows)}
        if not main:
            return metrics
        mlflow.log_metrics({f"final_{k}": float(v) for k, v in metrics.items()})

        final = trainer.model
        if peft_config is not None:
            final = final.merge_and_unload()  # serve one plain model, no adapter plumbing
        final.config.use_cache = True
        plot = tracking.loss_plot(trainer.state.log_history, output_dir / "loss.png", before)
        if plot:
            mlflow.log_artifact(str(plot))
        model_uri = tracking.log_model(final, tokenizer, output_dir / "mlflow_model")
        summary = {"run_id": run.info.run_id, "model_uri": model_uri, "tracking_uri": uri,
                   "experiment": experiment, "steps": trainer.state.global_step, "eval_loss_before": before,
                   "mlflow_model_dir": str(output_dir / "mlflow_model"), "loss_plot": str(plot) if plot else None,
                   "device": device, "precision": precision, "base_model": base, **metrics}
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    log(f"[train] finished: {summary['steps']} steps in {seconds:.1f}s, {metrics['tokens_per_s']:.0f} tokens/s, "
        f"train loss {result.training_loss:.4f}, eval loss {after:.4f}"
        + (f" (was {before:.4f})" if before is not None else "") + f"; model {model_uri} in {uri}")
    return summary
