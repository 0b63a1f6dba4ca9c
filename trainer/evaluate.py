"""Did it learn? The fine-tuned model against the model it started from, on held-out chats.

- NLL: the mean negative log-likelihood of the assistant tokens (labelled as training labels them, audit.label) of
  at most eval.rows held-out chats, for both models on the same tokens;
- samples: greedy answers of both models to eval.samples held-out prompts (the messages before the first assistant
  turn, prompted as the endpoint prompts), beside the reference answer;
- stop rate: the share of answers that end with a stop id (the end-of-turn token) within eval.max_new_tokens, and
  the mean answer length against the reference's.

Writes metrics.json, answers.jsonl and report.md into one folder. Runs where the models are: the local eval stage,
or the Azure ML training job right after training (the base model is already on the node). Imports nothing from the
runner.
"""

import json
import time
from pathlib import Path

from common.files import find_mlflow_model, write_atomic

from . import audit, eval_report

BATCH = 8


def device_of(model):
    return next(model.parameters()).device


def assistant_nll(model, tokenizer, rows, max_length: int) -> tuple[float, int]:
    """(summed NLL, token count) over the assistant tokens of rows, each cut at max_length."""
    import torch

    try:
        template = audit.training_template(tokenizer, True)
        labelled = [audit.label(tokenizer, r["messages"], template, True) for r in rows]
    except Exception:  # no training variant of this template: every token counts (said in the report)
        labelled = [audit.label(tokenizer, r["messages"], None, False) for r in rows]
    total, count = 0.0, 0
    for i in range(0, len(labelled), BATCH):
        chunk = [(ids[:max_length], labels[:max_length]) for ids, labels in labelled[i : i + BATCH]]
        width = max(len(ids) for ids, _ in chunk)
        pad = tokenizer.pad_token_id or 0
        ids = torch.tensor([x + [pad] * (width - len(x)) for x, _ in chunk], device=device_of(model))
        labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in chunk], device=device_of(model))
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in chunk], device=device_of(model))
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum"
        )
        total += float(loss)
        count += int((target != -100).sum())
    return total, count


def prompts_of(rows, samples: int) -> list[dict]:
    """The first `samples` rows with an assistant turn: the messages before it, and its answer as the reference."""
    out = []
    for r in rows:
        first = next((j for j, m in enumerate(r["messages"]) if m["role"] == "assistant"), None)
        if first:
            out.append({"messages": r["messages"][:first], "reference": r["messages"][first]["content"]})
        if len(out) == samples:
            break
    return out


def answers(model, tokenizer, prompts, max_new_tokens: int, stop_ids) -> list[dict]:
    """Greedy answers, batched with left padding: text (up to the stop), tokens, and whether a stop id ended it."""
    import torch

    stops = set(stop_ids)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out = []
    try:
        for i in range(0, len(prompts), BATCH):
            texts = [
                tokenizer.apply_chat_template(p["messages"], add_generation_prompt=True, tokenize=False)
                for p in prompts[i : i + BATCH]
            ]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device_of(model))
            with torch.inference_mode():
                gen = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    eos_token_id=sorted(stops),
                    pad_token_id=tokenizer.pad_token_id,
                )
            for row in gen[:, enc["input_ids"].shape[1] :].tolist():
                end = next((k for k, t in enumerate(row) if t in stops), None)
                kept = row if end is None else row[:end]
                out.append(
                    {
                        "text": tokenizer.decode(kept, skip_special_tokens=True).strip(),
                        "tokens": len(kept),
                        "stopped": end is not None,
                    }
                )
    finally:
        tokenizer.padding_side = side
    return out


def measure(model, tokenizer, rows, prompts, cfg: dict, stop_ids, max_length: int) -> dict:
    model.eval()
    nll, tokens = assistant_nll(model, tokenizer, rows, max_length)
    said = answers(model, tokenizer, prompts, cfg["max_new_tokens"], stop_ids) if prompts else []
    return {"nll": nll / max(tokens, 1), "tokens": tokens, "answers": said}


def evaluate(tuned, load_base, tokenizer, rows, cfg: dict, stop_ids, max_length: int, out_dir: Path, log=print) -> dict:
    """Measure the tuned model, then the base (loaded only then, by load_base()); write the folder; return the
    metrics. Both models are in memory for the base's part: on a GPU that is 7.6 GB more in bf16 at Phi-3-mini's size."""
    t0 = time.time()
    rows = rows[: cfg["rows"]]
    prompts = prompts_of(rows, cfg["samples"])
    log(
        f"[eval] {len(rows)} held-out chats, {len(prompts)} greedy answers of up to {cfg['max_new_tokens']} tokens; "
        "fine-tuned model first, then the base"
    )
    after = measure(tuned, tokenizer, rows, prompts, cfg, stop_ids, max_length)
    before = measure(load_base(), tokenizer, rows, prompts, cfg, stop_ids, max_length)
    samples = [
        {
            "messages": p["messages"],
            "reference": p["reference"],
            "reference_tokens": len(tokenizer(p["reference"], add_special_tokens=False)["input_ids"]),
            "base": b,
            "tuned": t,
        }
        for p, b, t in zip(prompts, before["answers"], after["answers"])
    ]
    metrics = eval_report.figures(before, after, samples, len(rows), cfg, time.time() - t0)
    write(out_dir, metrics, samples)
    return metrics


def write(out_dir: Path, metrics: dict, samples: list, judge: dict | None = None):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "answers.jsonl", "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    write_atomic(out_dir / "report.md", eval_report.markdown(metrics, samples, judge))
    write_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")  # last: its presence means done


def load_tuned(mlflow_dir):
    """(model, tokenizer) of a fine-tuned MLflow model folder, loaded as the endpoint loads it."""
    import os

    import torch

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    parts = mlflow.transformers.load_model(str(find_mlflow_model(mlflow_dir)), return_type="components")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = parts["model"].float() if device == "cpu" else parts["model"]
    return model.to(device).eval(), parts["tokenizer"]


def load_model(path, device: str | None = None):
    """A causal LM from a folder (the base) for evaluation, in float32 on a CPU without a GPU."""
    import torch
    from transformers import AutoModelForCausalLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32 if device == "cpu" else "auto")
    return model.to(device).eval()


def log_to_mlflow(mlflow, metrics: dict, folder: Path):
    """The figures as eval_* metrics and the folder's files under eval/ of the active MLflow run."""
    mlflow.log_metrics({f"eval_{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
    for name in ("metrics.json", "report.md", "answers.jsonl"):
        if (Path(folder) / name).is_file():
            mlflow.log_artifact(str(Path(folder) / name), artifact_path="eval")


def after_training(spec: dict, base: str, tokenizer, final, eval_file: Path, out_dir: Path, log) -> dict:
    """The eval stage's work in the training process (the Azure job), on the model just trained; logged to the
    active MLflow run and to the job's log. The base model is loaded onto the trained one's device."""
    import mlflow

    from . import chats, tracking
    from .hub import stop_ids

    device = str(device_of(final))
    metrics = evaluate(
        final,
        lambda: load_model(base, device),
        tokenizer,
        chats.load(eval_file),
        spec["eval"],
        stop_ids(base),
        spec["train"]["max_length"],
        out_dir,
        log,
    )
    tracking.best_effort("log the eval", log_to_mlflow, mlflow, metrics, out_dir)
    for line in eval_report.lines(metrics):
        log(f"[eval] {line}")
    return {k: metrics[k] for k in ("base_nll", "tuned_nll", "base_stop_rate", "tuned_stop_rate")}
