"""More than one process: who this one is, FSDP2 through transformers' and accelerate's own settings, and the full
state dict every rank takes part in gathering.

torchrun (locally) and Azure ML's PyTorch distribution (in the job) start the processes and set RANK, WORLD_SIZE
and LOCAL_WORLD_SIZE; the Trainer's accelerate joins them (NCCL on GPUs, gloo on the CPU). Every rank trains; rank 0
alone writes the run's files and MLflow records. With FSDP2 each rank also writes its own shard of each checkpoint
(torch.distributed.checkpoint), and a re-run resumes with every rank reading its shard back.
"""

import contextlib
import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def die_with_launcher():
    """Under torchrun (which starts each rank in a session of its own): end this rank when torchrun ends, however it
    ends. Without it, a SIGKILLed torchrun leaves its ranks training, racing the re-run that resumes their work."""
    import sys

    if not os.environ.get("TORCHELASTIC_RUN_ID") or sys.platform != "linux":
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # torchrun died before this line: nobody to train for
        os._exit(1)


def fsdp_arguments(fsdp_config: dict | None, activation_checkpointing: bool) -> dict:
    """TrainingArguments' own fsdp and fsdp_config for a sharded run (transformers 5: fsdp=True, the rest in
    fsdp_config; version 2 is FSDP2, fully_shard per decoder layer and then the root).

    Activation checkpointing moves into fsdp_config['activation_checkpointing'], FSDP's own, as transformers asks:
    its TrainingArguments flag under FSDP recomputes with a redundant all-gather.
    """
    config = {"version": 2, **(fsdp_config or {})}
    if activation_checkpointing:
        config["activation_checkpointing"] = True
    return {"fsdp": True, "fsdp_config": config, "activation_checkpointing": False}


@contextlib.contextmanager
def fsdp_on_the_cpu(device: str, sharded: bool):
    """Let accelerate take its FSDP2 path for processes on the CPU, as it does on GPUs.

    accelerate 1.15 calls torchrun's processes on the CPU MULTI_CPU and drops the FSDP plugin without a word (its FSDP
    branch lists only accelerator devices), so a CPU run would silently replicate the model (DDP). While the Trainer
    builds its Accelerator, this marks such a state FSDP with the plugin it was given; from there on accelerate's own
    code runs: fully_shard, sharded checkpoints through torch.distributed.checkpoint, gathered state dicts. On GPUs
    nothing changes. The test suite trains sharded over 2 CPU processes (gloo) through it.
    """
    if not (sharded and device == "cpu" and world_size() > 1):
        yield
        return
    from common.patches import accelerate_fsdp_on_the_cpu

    with accelerate_fsdp_on_the_cpu():
        yield


def full_state_dict(model) -> dict:
    """The whole model's state dict, gathered from every rank's shards onto rank 0's CPU memory (PyTorch's own
    torch.distributed.checkpoint.state_dict API). Every rank must call it; ranks other than 0 get an empty dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def at_train_begin(fn):
    """A Trainer callback that calls fn() as training begins (once the model is prepared)."""
    from transformers import TrainerCallback

    class AtTrainBegin(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            fn()

    return AtTrainBegin()


def whole_model(job):
    """The trained model as one plain module on rank 0 (None on the others).

    Sharded (FSDP2), every rank takes part in gathering the full state dict, which rank 0 loads into a fresh copy of
    the base model (LoRA adapters added as in training); otherwise each rank holds it whole already.
    """
    if not job.sharded:
        return job.trainer.model if is_main() else None
    state = full_state_dict(job.trainer.model)
    if not is_main():
        return None
    from transformers import AutoModelForCausalLM

    sharded = job.trainer.accelerator.unwrap_model(job.trainer.model)
    plain = AutoModelForCausalLM.from_pretrained(
        job.base, dtype=next(iter(state.values())).dtype, attn_implementation=sharded.config._attn_implementation
    )
    if hasattr(sharded, "peft_config"):
        from peft import get_peft_model

        plain = get_peft_model(plain, sharded.peft_config["default"])
    plain.load_state_dict(state, strict=True)
    return plain
