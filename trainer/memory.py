"""Peak training memory of one GPU (or the CPU), estimated before anything runs, and measured when it does.

estimate() is an analytic model of what one training step keeps alive at its peak: weights, gradients, optimizer
state, and the activations saved for the backward pass (the layers' saved tensors, attention scores under eager
attention, the logits and their float32 loss). Its terms follow Phi3DecoderLayer as transformers runs it; the
test suite checks the total against the bytes tensors really hold during training steps on the CPU
(trainer.tensor_bytes) at several small shapes. Pure Python: the runner's plan imports it without torch.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

GIB = 2**30


@dataclass(frozen=True)
class Shape:
    """The fields of a Phi3Config that decide memory."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False

    @property
    def kv_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads * self.num_key_value_heads

    def layer_linears(self) -> list[tuple[int, int]]:
        """(in, out) of each linear of one decoder layer: qkv_proj, o_proj, gate_up_proj, down_proj."""
        h, i = self.hidden_size, self.intermediate_size
        return [(h, h + 2 * self.kv_dim), (h, h), (h, 2 * i), (i, h)]

    def parameters(self) -> int:
        h, v = self.hidden_size, self.vocab_size
        layer = sum(a * b for a, b in self.layer_linears()) + 2 * h
        return v * h * (1 if self.tie_word_embeddings else 2) + self.num_hidden_layers * layer + h


PHI3_MINI = Shape(3072, 32, 32, 32, 8192, 32064)
# Phi-4-mini-instruct's config.json: 24 heads of 128 with 8 KV heads, 200,064 vocabulary rows, tied embeddings
PHI4_MINI = Shape(3072, 32, 24, 8, 8192, 200064, tie_word_embeddings=True)
KNOWN = {  # hub ids whose config.json cannot be read here (no download before a run is planned)
    "microsoft/Phi-3-mini-4k-instruct": PHI3_MINI,
    "microsoft/Phi-3-mini-128k-instruct": PHI3_MINI,
    "microsoft/Phi-3.5-mini-instruct": PHI3_MINI,
    "microsoft/Phi-4-mini-instruct": PHI4_MINI,
}


def shape_of(model: dict) -> Shape | None:
    """The spec's model section -> its Shape; None when it cannot be known without downloading it."""
    if model["source"] == "tiny" and model.get("tiny"):
        t = model["tiny"]
        return Shape(
            t["hidden_size"],
            t["num_hidden_layers"],
            t["num_attention_heads"],
            t.get("num_key_value_heads") or t["num_attention_heads"],
            t["intermediate_size"],
            t["vocab_size"],
            bool(t.get("tie_word_embeddings")),
        )
    ident = model.get("id") or ""
    if ident in KNOWN:
        return KNOWN[ident]
    config = Path(ident).expanduser() / "config.json"
    if config.is_file():
        c = json.loads(config.read_text())
        try:
            return Shape(
                c["hidden_size"],
                c["num_hidden_layers"],
                c["num_attention_heads"],
                c.get("num_key_value_heads") or c["num_attention_heads"],
                c["intermediate_size"],
                c["vocab_size"],
                bool(c.get("tie_word_embeddings", False)),
            )
        except KeyError:
            return None
    return None


def _optim_args(text) -> dict:
    return dict(kv.split("=", 1) for kv in (text or "").replace(" ", "").split(",") if "=" in kv)


def optimizer_bytes(optim: str | None, optim_args: str | None, weight_bytes: int) -> tuple[float, str]:
    """Bytes of optimizer state per trained parameter, and what they are."""
    optim = optim or "adamw_torch_fused"
    if optim in ("adamw_torch_8bit", "adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit"):
        return 2 + 8 / 256, "2 moments in 8 bits"
    if optim == "adamw_torch_4bit":
        return 1 + 8 / 128, "2 moments in 4 bits"
    if optim in ("sgd",):
        return 0, "none"
    if optim.startswith("adafactor"):
        return 0.1, "factored second moments"
    moments = 2 * weight_bytes
    if optim == "stable_adamw" and weight_bytes == 2:  # torch-optimi sums in Kahan's way for 16-bit weights
        return moments + weight_bytes, "2 moments + a Kahan compensation buffer"
    return moments, "2 moments" + ("" if optim.startswith("adam") else f" (assumed AdamW-like for {optim})")


@dataclass
class Estimate:
    weights: float
    grads: float
    optimizer: float
    activations: float
    notes: list = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations

    def line(self, limit: float | None = None, where: str = "") -> str:
        """'about 47 GiB of the 80 GiB on <where> (weights 7.1, grads 7.1, optimizer 21.3, activations ~9)'."""
        parts = (
            f"weights {self.weights / GIB:.1f}, grads {self.grads / GIB:.1f}, "
            f"optimizer {self.optimizer / GIB:.1f}, activations ~{self.activations / GIB:.1f}"
        )
        total = f"{self.total / GIB:.0f}" if self.total >= 10 * GIB else f"{self.total / GIB:.2g}"
        if limit:
            return f"about {total} GiB of the {limit / GIB:.0f} GiB{where} ({parts})"
        return f"about {total} GiB ({parts})"


def for_spec(spec: dict, device: str = "cuda", shards: int = 1) -> Estimate | None:
    """The estimate for one process (shards: FSDP2 processes sharing the model); None for a shape not known here."""
    shape = shape_of(spec["model"])
    if shape is None:
        return None
    m = spec["model"]
    return estimate(shape, spec["train"], spec["compute"]["precision"], m["attn_implementation"], device, shards)


HEADROOM = 0.9  # above this share of a GPU's memory an out-of-memory error is likely (the allocator needs room too)


def sharding(spec: dict, processes: int, gpu_gib: float | None) -> tuple[bool, str]:
    """Whether FSDP2 shards the model over the run's processes, and why: one rule for the plan (the SKU's GPUs) and
    the trainer (the GPU torch reports). train.fsdp=auto shards where there are several processes and one GPU could
    not hold the whole model with HEADROOM (the plan's estimate); else DDP, each process holding all of it."""
    choice = spec["train"].get("fsdp", False)
    if processes < 2:
        return False, "one process: nothing to shard or replicate"
    elif choice is True:
        return (
            True,
            f"FSDP2 (train.fsdp=true): weights, gradients and optimizer state sharded over {processes} processes",
        )
    if choice != "auto":
        return False, f"DDP (train.fsdp=false): each of the {processes} processes holds the whole model"
    whole = for_spec(spec)
    if whole is None or not gpu_gib:
        why = "no GPU memory to compare with" if whole else "the model's shape is not known here"
        return False, f"DDP (train.fsdp=auto, {why}): each of the {processes} processes holds the whole model"
    limit = gpu_gib * GIB
    if whole.total <= HEADROOM * limit:
        return False, (
            f"DDP (train.fsdp=auto): one GPU holds the whole model, about {whole.total / GIB:.0f} of its "
            f"{gpu_gib:.0f} GiB; each of the {processes} processes keeps all of it"
        )
    shared = for_spec(spec, shards=processes)
    return True, (
        f"FSDP2 (train.fsdp=auto): the whole model would take about {whole.total / GIB:.0f} of the "
        f"{gpu_gib:.0f} GiB of one GPU; sharded over {processes} processes, about "
        f"{shared.total / GIB:.0f} GiB each"
    )


def fitting(spec: dict, limit: float, device: str = "cuda", processes: int = 1) -> tuple[list[str], Estimate] | None:
    """The fewest overrides (sharding over the run's processes, checkpointing, a smaller batch with the same global
    batch, 8-bit optimizer state, LoRA) under which the estimate fits in limit bytes, and that estimate; None when
    nothing here fits."""
    t = spec["train"]
    changes = []  # (overrides, train updates), tried alone and then together
    if processes > 1 and t.get("fsdp") is not True:
        changes.append((["train.fsdp=true"], {"fsdp": True}))
    if not t.get("activation_checkpointing"):
        changes.append((["train.activation_checkpointing=true"], {"activation_checkpointing": True}))
    batches = []
    b, accumulate = t["per_device_train_batch_size"], t["gradient_accumulation_steps"]
    while b > 1:
        b, accumulate = b // 2, accumulate * 2 if b % 2 == 0 else accumulate
        batches.append(
            (
                [f"train.per_device_train_batch_size={b}", f"train.gradient_accumulation_steps={accumulate}"],
                {"per_device_train_batch_size": b, "gradient_accumulation_steps": accumulate},
            )
        )
    if optimizer_bytes(t.get("optim"), t.get("optim_args"), 2)[0] > 2.1:
        changes.append(
            (
                ["++train.optim=adamw_torch_8bit", "++train.optim_args=bf16_stochastic_round=True"],
                {"optim": "adamw_torch_8bit", "optim_args": "bf16_stochastic_round=True"},
            )
        )
    if not (t.get("lora") or {}).get("enabled"):
        changes.append((["train.lora.enabled=true"], {"lora": {**(t.get("lora") or {"r": 16}), "enabled": True}}))
    tried = [[c] for c in changes] + [[*changes[:k], bt] for k in range(len(changes) + 1) for bt in batches]
    for combo in tried:
        train = dict(t)
        for _, update in combo:
            train.update(update)
        # train.fsdp=auto reaches here only when the whole model does not fit: it shards
        shards = processes if processes > 1 and train.get("fsdp") in (True, "auto") else 1
        est = for_spec({**spec, "train": train}, device, shards)
        if est is not None and est.total <= limit:
            return [o for overrides, _ in combo for o in overrides], est
    return None


def _lora_params(shape: Shape, r: int) -> int:
    return shape.num_hidden_layers * sum(r * (a + b) for a, b in shape.layer_linears())


def estimate(
    shape: Shape, train: dict, precision: str, attn: str = "eager", device: str = "cuda", shards: int = 1
) -> Estimate:
    """Peak bytes of one training process: one GPU's share when each process holds the whole model (DDP, shards=1),
    or, under FSDP2 over shards processes, its shard of weights, gradients and optimizer state plus what is gathered
    whole for a while: the root module's parameters (embeddings, head, final norm), the decoder layer being computed
    and the one prefetched, and one layer's full gradients before they are reduce-scattered. Activations are each
    process's own either way."""
    n = shape.parameters()
    weight_bytes = 4 if precision in ("fp32", "bf16-mixed") else 2
    act = 4 if precision == "fp32" else 2  # matmul outputs: float32, or 16-bit (also under bf16 autocast)
    lora = train.get("lora") or {}
    trained = _lora_params(shape, lora["r"]) if lora.get("enabled") else n
    weights = (n * weight_bytes + (trained if lora.get("enabled") else 0) * weight_bytes) / shards
    notes = []
    if precision == "bf16-mixed":
        weights += n * 2 / shards  # autocast keeps a bf16 copy of every weight it casts until the forward pass ends
        notes.append("bf16 copies of the weights under autocast")
    grads = trained * weight_bytes / shards
    per_param, what = optimizer_bytes(train.get("optim"), train.get("optim_args"), weight_bytes)
    optimizer = trained * per_param / shards
    notes.append(f"optimizer: {what}")
    if shards > 1:
        h_, v_ = shape.hidden_size, shape.vocab_size
        layer_params = sum(a * b for a, b in shape.layer_linears()) + 2 * h_
        root_params = v_ * h_ * (1 if shape.tie_word_embeddings else 2) + h_
        weights += (root_params + 2 * layer_params) * weight_bytes  # gathered: the root, this layer, the next
        grads += layer_params * weight_bytes * (trained / n)  # one layer's full gradients, then reduce-scattered
        notes.append(f"FSDP2: state sharded over {shards} processes, the root and two layers gathered at a time")

    h, i, v = shape.hidden_size, shape.intermediate_size, shape.vocab_size
    heads, layers = shape.num_attention_heads, shape.num_hidden_layers
    seq, rows = train["max_length"], train["per_device_train_batch_size"]
    tokens = rows * seq
    # padding-free packing (bfd) puts a batch's rows in one sequence: eager attention then spans all of them
    padding_free = train.get("packing") and train.get("packing_strategy", "bfd") == "bfd"
    span, seqs = (tokens, 1) if padding_free else (seq, rows)
    kind = "eager" if attn == "eager" else "sdpa"  # flash-attention 2 keeps what SDPA's flash kernel keeps
    c_h, c_i, c_s = SAVED[("bf16" if precision == "fp16" else precision, kind)]
    layer = tokens * (c_h * h + c_i * i) + seqs * heads * span * span * c_s
    # TRL's SFTTrainer scores the vocabulary in tiles (trl.trainer.utils, fused_lm_head): a tile of up to 4096
    # tokens x 32768 logits (on a CPU, without Triton, with float32 temporaries of its filled part: 7 of them,
    # measured where the vocabulary weighs, at Phi-4-mini's shape, tests/unit/test_memory.py), then float32
    # gradients of the hidden states and of the head's weight (one head with tied embeddings: Shape.parameters)
    tile = min(tokens, 4096)
    temporaries = 7 * tile * min(v, 32768) * 4 if device == "cpu" else 0
    head = tile * 32768 * act + temporaries + tokens * h * 4 + v * h * (4 + weight_bytes)
    if train.get("activation_checkpointing"):
        kept = layers * tokens * act * h  # each layer's input; one layer at a time is recomputed in backward
        notes.append("activation checkpointing: one layer's activations at a time")
        peak = max(kept + head, kept + layer + grads)
    else:
        peak = max(layers * layer + head, grads)
    # the activations line is what the step holds beyond weights, gradients and optimizer state at its peak
    return Estimate(weights, grads, optimizer, max(peak - grads, 0), notes)


# Bytes saved for backward per token of one decoder layer, c_h x hidden + c_i x intermediate, plus c_s x heads x
# span per token for the attention scores, by precision and attention; measured with autograd's saved-tensor hooks
# on Phi3DecoderLayer (transformers 5.23), which every device runs alike. SDPA's flash kernels (GPU, and the CPU's
# for causal rows) keep no scores.
SAVED = {
    ("bf16", "eager"): (24, 8, 6),
    ("bf16", "sdpa"): (30, 8, 0),
    ("fp32", "eager"): (40, 16, 4),
    ("fp32", "sdpa"): (52, 16, 0),
    ("bf16-mixed", "eager"): (37, 9.5, 4.25),
    ("bf16-mixed", "sdpa"): (36, 9.5, 0),
}
