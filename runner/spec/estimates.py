"""Before paying: how long an Azure training job is expected to take and cost, and whether the deployment's VM holds
the model and how fast it can answer. Pure arithmetic over the spec and runner/spec/hardware.py's sourced figures;
every assumption is said where the figure is printed.

Job time: tokens to train (from the data stage's JSONL once it has run, else the slice's rows x an assumed mean chat
length) x FLOPs per token (6N for a full fine-tune, 4N with LoRA, +2N recomputed under activation checkpointing,
plus causal attention) / (the GPUs' peak x an assumed MFU), plus the held-out evaluations (2N per token).

Serving: the weights in the dtype the scoring script serves (float32 on a CPU VM, half precision on a GPU), plus the
KV cache of max_concurrent_requests_per_instance requests at a context of train.max_length +
deploy.max_new_tokens_limit; the decode bound is the memory bandwidth over the bytes read per generated token (the
weights, and one request's KV cache): decoding one token reads every weight once.
"""

import math

from trainer.memory import GIB, shape_of

from . import hardware

# Model FLOPs utilisation assumed until a GPU run measures it (bench/train_recipes.py on a GPU replaces it): a
# single-GPU Hugging Face Trainer fine-tune of a 3-4B model typically reaches 30-45 % in bf16 (PaLM reports 46 % for
# its tuned pretraining, torchtitan 40-50 % for Llama 3 8B; a Trainer loop with packing and checkpointing is below
# those). No GPU was lent to this project, so none is measured here.
ASSUMED_MFU = 0.35
MFU_SOURCE = "an assumption until bench/train_recipes.py measures it on a GPU"
# Mean tokens of one ultrachat_200k chat before the max_length cut, assumed when the data stage has not run yet
# (its train_sft chats have 3-4 exchanges of long answers; the data stage's count replaces this once it has run)
ASSUMED_TOKENS_PER_CHAT = 1400
# English text is about 4 characters a token under Phi's 32k and 200k vocabularies (a rule of thumb, not a count);
# a chat's JSONL line adds about one byte in ten of keys and quotes, and its template about as many tokens
BYTES_PER_TOKEN = 4.0
HUB_ROWS = {("HuggingFaceH4/ultrachat_200k", "train_sft"): 207_865}  # rows of the splits the shipped options slice
START_UP_H = 0.25  # node start-up, image pull and the base model's download before the first step (assumed)
READABLE_TOKENS_PER_S = 5.0  # below this an answer arrives slower than people read
SERVING_OVERHEAD_GIB = 2.0  # the inference server, Python, torch and the tokenizer beside the model (assumed)


def flops_per_token(spec: dict, shape) -> float:
    """Training FLOPs per token: forward and backward of the linear layers, recomputation, causal attention."""
    n = shape.parameters()
    lora = (spec["train"].get("lora") or {}).get("enabled")
    per = (4 if lora else 6) * n  # LoRA: no weight gradients of the frozen weights
    if spec["train"].get("activation_checkpointing"):
        per += 2 * n  # each layer's forward runs again in backward
    seq = spec["train"]["max_length"]
    per += 6 * shape.num_hidden_layers * shape.hidden_size * seq  # QK^T and AV, forward and backward, causal half
    return float(per)


def train_tokens(spec: dict, data: dict) -> tuple[int, str]:
    """(tokens of one epoch, how they were counted): the data stage's count once it has run, else an estimate."""
    cap = spec["train"]["max_length"]
    if data.get("train_bytes") and data.get("train_rows"):
        rows = data["train_rows"]
        per = min(cap, data["train_bytes"] / BYTES_PER_TOKEN / rows)
        return round(rows * per), (
            f"{rows} chats of the data stage, {per:.0f} tokens each on average (their JSONL's bytes / "
            f"{BYTES_PER_TOKEN:g}, capped at max_length)"
        )
    d = spec["data"]
    if d["source"] == "hub":
        total = HUB_ROWS.get((d["dataset"], d["split"]))
        rows = d["rows"] if d["rows"] is not None else (round(total * d["percent"] / 100) if total else None)
        if rows is None:
            return 0, f"unknown: the size of {d['dataset']} {d['split']} is not listed (runner/spec/estimates.py)"
        train_rows = rows - (math.ceil(rows * d["test_size"]) if isinstance(d["test_size"], float) else d["test_size"])
        per = min(ASSUMED_TOKENS_PER_CHAT, cap)
        return train_rows * per, f"{train_rows} chats x an assumed {per} tokens each (the data stage counts them)"
    return 0, "unknown until the data stage has run (stages=[data])"


def job(spec: dict, data: dict | None = None) -> dict | None:
    """The Azure job's expected hours and dollars (None for a job on a VM without known GPUs or an unknown model)."""
    c = spec["compute"]
    sku = hardware.gpu(c["instance_type"])
    shape = shape_of(spec["model"])
    if sku is None or shape is None:
        return None
    tokens, counted = train_tokens(spec, data or {})
    if not tokens:
        return {"hours": None, "usd": None, "why": counted}
    epochs = spec["train"]["num_train_epochs"]
    per_token = flops_per_token(spec, shape)
    half = c["precision"] in ("bf16", "fp16", "bf16-mixed")
    peak = (sku.tflops_half if half else sku.tflops_fp32) * 1e12
    gpus = sku.gpus * c["instance_count"]
    train_s = tokens * epochs * per_token / (peak * gpus * ASSUMED_MFU)
    evals = epochs + 1 if spec["train"].get("eval_strategy") == "epoch" else 1  # before training, then each epoch
    d, per_chat = spec["data"], min(ASSUMED_TOKENS_PER_CHAT, spec["train"]["max_length"])
    if d.get("eval") == "fixed" and d.get("eval_rows"):  # a sweep's held-out set: eval_rows of the eval split
        eval_tokens = d["eval_rows"] * per_chat
    elif isinstance(d["test_size"], float):  # the other side of the 80/20 split
        eval_tokens = tokens * d["test_size"] / (1 - d["test_size"])
    else:  # test_size held-out chats
        eval_tokens = d["test_size"] * per_chat
    eval_s = evals * eval_tokens * 2 * shape.parameters() / (peak * gpus * ASSUMED_MFU)
    hours = (train_s + eval_s) / 3600 + START_UP_H
    usd = hardware.usd(c["instance_type"], hours * c["instance_count"])
    return {
        "hours": hours,
        "usd": usd,
        "tokens": tokens,
        "epochs": epochs,
        "counted": counted,
        "gflop_per_token": per_token / 1e9,
        "peak_tflops": peak / 1e12,
        "gpus": gpus,
        "gpu": sku.gpu,
    }


def job_line(spec: dict, data: dict | None = None) -> str | None:
    """'expected: about 1.4 h, about $5.14 (...)', or None when it cannot be estimated."""
    e = job(spec, data)
    if e is None:
        return None
    if e["hours"] is None:
        return f"expected time: {e['why']}"
    money = f", about ${e['usd']:.2f}" if e["usd"] is not None else ""
    return (
        f"expected: about {e['hours']:.1f} h{money} ({e['tokens']:,} tokens x {e['epochs']} epoch(s), {e['counted']}; "
        f"{e['gflop_per_token']:.1f} GFLOP per token on {e['gpus']}x {e['gpu']} at {e['peak_tflops']:g} TFLOPS peak, "
        f"assuming {ASSUMED_MFU:.0%} MFU ({MFU_SOURCE}); plus about {START_UP_H * 60:.0f} min of start-up and "
        "download; the held-out evaluations included)"
    )


def serving(spec: dict) -> dict | None:
    """The deployment's memory and decode bound on its VM, or None for an unknown model or VM."""
    d = spec["deploy"]
    shape = shape_of(spec["model"])
    sku = hardware.SKUS.get(d["instance_type"])
    if shape is None or sku is None or not sku.mem_gbs:
        return None
    on_gpu = sku.gpus > 0
    dtype, width = ("bf16" if sku.bf16 else "fp16", 2) if on_gpu else ("fp32", 4)
    weights = shape.parameters() * width
    # a model trained in bf16 is saved in bf16; a CPU VM loads that and converts it to float32, both held at once
    # (a GPU VM converts in its own RAM and moves only the half-precision weights to the GPU)
    saved = 2 if spec["compute"]["precision"] in ("bf16", "fp16") else 4
    loading = shape.parameters() * (saved + width) if saved != width and not on_gpu else weights
    kv_per_token = 2 * shape.num_hidden_layers * shape.kv_dim * width
    context = spec["train"]["max_length"] + d["max_new_tokens_limit"]
    concurrent = d["max_concurrent_requests_per_instance"]
    kv = kv_per_token * context * concurrent
    memory = (sku.gpu_gib if on_gpu else sku.ram_gib) * GIB
    overhead = 0 if on_gpu else SERVING_OVERHEAD_GIB * GIB
    need = max(weights + kv, loading) + overhead
    per_token_read = weights + kv_per_token * context / 2  # one request, half its context on average
    return {
        "dtype": dtype,
        "weights_gib": weights / GIB,
        "kv_gib": kv / GIB,
        "kv_kib_per_token": kv_per_token / 1024,
        "context": context,
        "concurrent": concurrent,
        "loading_gib": loading / GIB,
        "need_gib": need / GIB,
        "memory_gib": memory / GIB,
        "fits": need <= memory,
        "tokens_per_s": sku.mem_gbs * 1e9 / per_token_read,
        "bandwidth": f"{sku.mem_gbs:g} GB/s ({sku.mem_source})",
        "where": f"{sku.gpus}x {sku.gpu}" if on_gpu else "the VM's memory",
    }


def gpu_override(spec: dict) -> str:
    """The cheapest listed GPU deployment that holds this model, as an override."""
    best = None
    for size, sku in sorted(hardware.SKUS.items(), key=lambda kv: kv[1].usd_per_hour):
        if sku.gpus != 1 or not sku.mem_gbs:
            continue
        trial = {**spec, "deploy": {**spec["deploy"], "instance_type": size}}
        s = serving(trial)
        if s and s["fits"]:
            best = (size, sku, s)
            break
    if best is None:
        return "a GPU deploy.instance_type from runner/spec/hardware.py"
    size, sku, s = best
    return (
        f"deploy.instance_type={size} ({sku.gpu}, {s['dtype']}, about {s['tokens_per_s']:.0f} tokens/s at best, "
        f"${sku.usd_per_hour:.2f}/h)"
    )


def serving_lines(spec: dict) -> tuple[list[str], str | None, str | None]:
    """(plan lines, a refusal or None, a warning or None) for the deployment's fit and speed."""
    s = serving(spec)
    if s is None:
        return [], None, None
    d = spec["deploy"]
    line = (
        f"serving: {s['dtype']} weights {s['weights_gib']:.1f} GiB + KV cache {s['kv_gib']:.1f} GiB "
        f"({s['kv_kib_per_token']:.0f} KiB per token x {s['context']} tokens x {s['concurrent']} concurrent requests)"
        + (f", {s['loading_gib']:.1f} GiB while loading" if s["loading_gib"] > s["weights_gib"] + s["kv_gib"] else "")
        + f": about {s['need_gib']:.1f} of {s['memory_gib']:.0f} GiB on {d['instance_type']} ({s['where']}): "
        + ("fits" if s["fits"] else "does not fit")
    )
    speed = (
        f"answer speed: at most about {s['tokens_per_s']:.1f} tokens/s per request (decoding reads every weight "
        f"once per token; memory bandwidth {s['bandwidth']}); a 128-token answer takes at least "
        f"{128 / s['tokens_per_s']:.0f} s"
    )
    refusal = warning = None
    if not s["fits"]:
        refusal = (
            f"the deployment needs about {s['need_gib']:.1f} GiB and {d['instance_type']} has {s['memory_gib']:.0f}: "
            f"it cannot hold the model; e.g. {gpu_override(spec)}, or fewer "
            "deploy.max_concurrent_requests_per_instance"
        )
    elif s["tokens_per_s"] < READABLE_TOKENS_PER_S:
        warning = (
            f"{d['instance_type']} answers at most about {s['tokens_per_s']:.1f} tokens/s, slower than people read "
            f"(a 128-token answer takes at least {128 / s['tokens_per_s']:.0f} s); a GPU deployment: "
            f"{gpu_override(spec)}"
        )
    return [line, speed], refusal, warning
