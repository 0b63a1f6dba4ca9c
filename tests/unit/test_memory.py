"""Will it fit? The peak-memory estimate against tensors measured in real training steps, and the plan's refusals."""

import itertools
import json

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from runner import CONF_DIR
from runner.spec import to_spec
from runner.spec.validate import problems
from trainer import memory

from ..support.helpers import runner_cli

PLAN = ["compute=a100", "model=phi35", "data=1pct", "plan=true"]
WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
    "upsilon phi chi psi omega"
).split()


def test_the_tutorials_command_prints_its_memory_against_the_a100s(tmp_path):
    r = runner_cli(*PLAN, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if "memory:" in x)
    assert "GiB of the 80 GiB on Standard_NC24ads_A100_v4 (1x A100 80GB)" in line and line.endswith("per GPU: fits")
    assert all(part in line for part in ("weights 7.1", "grads 7.1", "optimizer 7.2", "activations ~"))


def test_phi4mini_plans_its_own_memory_against_the_a100s_and_fits(tmp_path):
    """Tied embeddings (3.84B parameters, not 4.45B) and GQA, the vocabulary scored in TRL's tiles."""
    r = runner_cli("compute=a100", "model=phi4mini", "data=1pct", "plan=true", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if "memory:" in x)
    assert "GiB of the 80 GiB on Standard_NC24ads_A100_v4 (1x A100 80GB)" in line and line.endswith("per GPU: fits")
    assert "weights 7.1" in line and "a new version of mlflow_model phi4-chat-phi4mini from" in r.stdout
    shape = memory.PHI4_MINI
    assert round(shape.parameters() / 1e9, 2) == 3.84 and shape.kv_dim == 1024


def test_a_run_that_cannot_fit_is_refused_with_an_override_that_fits(tmp_path):
    r = runner_cli(*PLAN, "train.per_device_train_batch_size=64", "train.activation_checkpointing=false", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "of the 80 GiB on Standard_NC24ads_A100_v4" in r.stderr and "it cannot fit; e.g. " in r.stderr
    assert not (tmp_path / "outputs").exists(), "a refused run leaves nothing behind"
    fix = r.stderr.split("it cannot fit; e.g. ", 1)[1].split(" (about", 1)[0].split()
    assert fix and all("=" in o for o in fix)
    # the named overrides, typed after the same command, make a plan that fits
    r = runner_cli(
        *PLAN, "train.per_device_train_batch_size=64", "train.activation_checkpointing=false", *fix, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert "per GPU: fits" in r.stdout


def _spec(*overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        spec = to_spec(compose("config", overrides=list(overrides)))
    GlobalHydra.instance().clear()
    return spec


GRID = list(
    itertools.product(
        ["a100", "cpu_e16s"],
        ["phi3", "phi35", "phi4mini", "tiny"],
        [4, 16, 64],
        [True, False],
        ["bf16_8bit_sr", "seed_recipe"],
    )
)


@pytest.mark.parametrize("compute,model,batch,ckpt,train", GRID[::3])
def test_every_combination_the_estimate_says_cannot_fit_is_refused_and_its_fix_fits(compute, model, batch, ckpt, train):
    overrides = [
        f"compute={compute}",
        f"model={model}",
        f"train={train}",
        "plan=true",
        f"train.per_device_train_batch_size={batch}",
        f"train.activation_checkpointing={str(ckpt).lower()}",
    ]
    if model == "tiny":
        overrides.append("train.max_length=512")
    spec = _spec(*overrides)
    found = [p for p in problems(spec) if p.startswith("train: ")]
    est = memory.for_spec(spec)
    if compute == "cpu_e16s":  # a CPU VM: nothing to compare with on a GPU
        assert not found
        return
    over = est.total > 80 * memory.GIB
    assert bool(found) == over, (est.line(80 * memory.GIB), found)
    if over:
        fix = found[0].split("it cannot fit; e.g. ", 1)[1].split(" (about", 1)[0].split()
        fixed = _spec(*overrides, *fix)
        assert memory.for_spec(fixed).total <= 80 * memory.GIB and not problems(fixed)


def test_gpus_without_bf16_and_more_processes_than_gpus_are_refused():
    spec = _spec(
        "compute=a100",
        "model=phi3",
        "plan=true",
        "compute.instance_type=Standard_NC6s_v3",
        "compute.processes_per_instance=2",
        "train.lora.enabled=true",
        "train.per_device_train_batch_size=1",
    )
    found = "\n".join(problems(spec))
    assert "needs bfloat16 arithmetic, which the GPU on Standard_NC6s_v3 (1x V100 16GB) lacks" in found
    assert "compute.processes_per_instance: 2 processes but Standard_NC6s_v3 has 1 GPU(s)" in found


def test_a_run_within_ten_percent_of_the_limit_is_warned_about(tmp_path):
    # the tutorial's recipe and attention (eager) with fp32 master weights: about 76 of 80 GiB
    r = runner_cli(
        *PLAN, "compute.precision=bf16-mixed", "train=seed_recipe", "model.attn_implementation=eager", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert "warning: train: about " in r.stderr and "within 10 % of the limit" in r.stderr


def test_the_shape_comes_from_a_local_model_folder(tmp_path):
    config = {
        "hidden_size": 96,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 200,
        "vocab_size": 700,
        "tie_word_embeddings": False,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    shape = memory.shape_of({"source": "hub", "id": str(tmp_path)})
    assert shape == memory.Shape(96, 3, 4, 2, 200, 700)
    from transformers import Phi3Config, Phi3ForCausalLM

    with __import__("torch").device("meta"):
        model = Phi3ForCausalLM(Phi3Config(**config, pad_token_id=0))
    assert shape.parameters() == sum(p.numel() for p in model.parameters())
    assert memory.shape_of({"source": "hub", "id": "someone/unknown-model"}) is None


@pytest.fixture(scope="module")
def long_rows(tmp_path_factory):
    """Chats longer than any max_length below (so every row fills it) and a tokenizer trained on them."""
    from trainer.tiny import build_tokenizer

    work = tmp_path_factory.mktemp("memory")
    rows = [
        {
            "messages": [
                {"role": "user", "content": " ".join(WORDS[k:] + WORDS[:k])},
                {"role": "assistant", "content": " ".join((WORDS[k:] + WORDS[:k]) * 60)},
            ]
        }
        for k in range(24)
    ]
    (work / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = [m["content"] for r in rows for m in r["messages"]]
    return work, {kind: build_tokenizer(texts, 600, kind) for kind in ("phi3", "phi4mini")}


# (hidden, layers, heads, intermediate, batch, max_length, attention, precision, checkpointing, packing)
SHAPES = [
    (256, 4, 4, 512, 4, 256, "eager", "bf16", False, False),  # activations dominate
    (512, 2, 8, 1024, 2, 128, "eager", "bf16", False, False),  # weights and optimizer state dominate
    (256, 4, 4, 512, 4, 256, "eager", "bf16", True, False),  # activation checkpointing
    (256, 4, 4, 512, 4, 256, "sdpa", "fp32", False, False),  # fp32, SDPA
    (256, 2, 4, 512, 4, 256, "eager", "bf16-mixed", False, True),  # fp32 master weights, padding-free packing
]
# Phi-4-mini's shape at small sizes (model=phi4mini: its template, its pad): GQA with 3 query heads per KV head,
# partial rotary, tied embeddings, and a vocabulary far wider than the model (200,064 rows against 3,072 there),
# so the head and the logits weigh as they do there: (..., KV heads, vocabulary rows)
PHI4_SHAPES = [
    (192, 2, 6, 512, 4, 256, "eager", "bf16", False, False, 2, 12544),  # the logits and the tied head dominate
    (192, 4, 6, 512, 4, 256, "sdpa", "bf16", True, False, 2, 12544),  # SDPA, activation checkpointing
    (192, 2, 6, 512, 4, 256, "eager", "bf16-mixed", False, True, 2, 12544),  # fp32 master weights, packing
]


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES + PHI4_SHAPES, ids=lambda s: "-".join(map(str, s)))
def test_the_estimate_is_within_15_percent_of_the_bytes_training_steps_hold(shape, long_rows, tmp_path):
    """Two optimizer steps through trainer.fit's own setup() (SFTTrainer), every tensor's storage counted."""
    est, peak = estimate_and_peak(shape, long_rows, tmp_path, "cpu")
    assert 0.85 <= est.total / peak <= 1.15, (est.line(), peak / memory.GIB)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("shape", [s for s in SHAPES if s[7] == "bf16"][:2], ids=lambda s: "-".join(map(str, s)))
def test_the_estimate_holds_against_cudas_own_peak(shape, long_rows, tmp_path):
    """The same steps on a GPU, measured by CUDA's caching allocator (max_memory_allocated): what the plan's
    fit check compares with the GPU's memory. ./dev test -m gpu on a GPU machine."""
    est, peak = estimate_and_peak(shape, long_rows, tmp_path, "cuda")
    assert 0.8 <= est.total / peak <= 1.25, (est.line(), peak / memory.GIB)


def estimate_and_peak(shape, long_rows, tmp_path, device: str):
    """(the estimate for this shape, the peak bytes two real training steps held on device)."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    from trainer.fit import setup
    from trainer.tensor_bytes import TensorBytes
    from trainer.tiny import stop_ids

    h, layers, heads, i, batch, length, attn, precision, ckpt, packing, *phi4 = shape
    work, tokenizers = long_rows
    tok = tokenizers["phi4mini" if phi4 else "phi3"]
    kv, rows = phi4 or (heads, len(tok))
    torch.manual_seed(0)
    config = Phi3Config(
        hidden_size=h,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=i,
        vocab_size=rows,
        max_position_embeddings=4096,
        pad_token_id=tok.pad_token_id,
        eos_token_id=stop_ids(tok),  # as the tiny model's: the template audit checks that generation stops at <|end|>
        bos_token_id=tok.eos_token_id,
        tie_word_embeddings=bool(phi4),
        partial_rotary_factor=0.75 if phi4 else 1.0,
    )
    Phi3ForCausalLM(config).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    spec = _spec("model=phi4mini" if phi4 else "model=phi3", "train=seed_recipe")
    spec["model"].update(id=str(tmp_path / "model"), attn_implementation=attn)
    spec["compute"].update(device=device, precision=precision)
    spec["train"].update(
        max_length=length,
        per_device_train_batch_size=batch,
        max_steps=2,
        packing=packing,
        activation_checkpointing=ckpt,
        eval_strategy="no",
        save_steps=100,
        logging_steps=100,
        include_num_input_tokens_seen=True,
    )
    job = setup(
        spec, work / "chats.jsonl", work / "chats.jsonl", tmp_path / "out", tmp_path / "ckpt", None, lambda *_: None
    )
    model = job.trainer.model
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        job.trainer.train()
        peak = torch.cuda.max_memory_allocated()
    else:
        with TensorBytes([*model.parameters(), *model.buffers()]) as measured:
            job.trainer.train()
        peak = measured.peak
    assert job.trainer.state.num_input_tokens_seen >= 2 * batch * length * 0.95, "rows shorter than max_length"
    return memory.for_spec(spec, device), peak


def test_a_local_run_is_checked_against_the_gpu_nvidia_smi_reports(tmp_path):
    """compute=local on a machine with one 24 GB GPU (nvidia-smi's own output format, from a script on PATH)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA A10G, 23028'\n")
    smi.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{__import__('os').environ['PATH']}"}
    r = runner_cli(
        "model=phi3", "data=10rows", "compute.device=cuda", "compute.precision=bf16", "plan=true", cwd=tmp_path, env=env
    )
    assert r.returncode == 2, r.stdout[-2000:]
    assert "of the 22 GiB of this machine's NVIDIA A10G" in r.stderr and "it cannot fit; e.g. " in r.stderr
    r = runner_cli(
        "model=phi3",
        "data=10rows",
        "compute.device=cuda",
        "compute.precision=bf16",
        "plan=true",
        "train.lora.enabled=true",
        "train.per_device_train_batch_size=1",
        cwd=tmp_path,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert "of the 22 GiB of this machine's NVIDIA A10G" in r.stdout and "per GPU: fits" in r.stdout


def test_sharding_divides_the_state_and_adds_what_fsdp2_gathers():
    spec = _spec("compute=a100x4", "model=phi3", "train=seed_recipe", "compute.precision=bf16-mixed", "plan=true")
    whole, shard = memory.for_spec(spec), memory.for_spec(spec, shards=4)
    shape = memory.shape_of(spec["model"])
    layer = sum(a * b for a, b in shape.layer_linears()) + 2 * shape.hidden_size
    root = 2 * shape.vocab_size * shape.hidden_size + shape.hidden_size
    # fp32 weights (+ bf16 autocast copies) and AdamW state: each process keeps a quarter, plus the root module and
    # two decoder layers gathered whole, and one layer's full gradients before they are reduce-scattered
    assert shard.weights == pytest.approx(whole.weights / 4 + (root + 2 * layer) * 4)
    assert shard.grads == pytest.approx(whole.grads / 4 + layer * 4)
    assert shard.optimizer == pytest.approx(whole.optimizer / 4) and shard.activations == whole.activations
    n = shape.parameters()  # fp32 master weights, gradients and AdamW's two moments: 16 bytes each, about 61 GB
    assert 60 < (whole.weights - 2 * n + whole.grads + whole.optimizer) / 1e9 < 62


def test_auto_shards_only_with_several_processes_and_a_model_one_gpu_cannot_hold():
    eager = "model.attn_implementation=eager"  # the tutorial's attention, which keeps every score
    big = _spec("compute=a100x4", "model=phi3", "train=seed_recipe", "compute.precision=bf16-mixed", eager, "plan=true")
    small = _spec("compute=a100x4", "model=phi3", eager, "plan=true")  # the 8-bit default: about 36 GiB
    assert memory.sharding(big, 4, 80)[0] and not memory.sharding(big, 1, 80)[0]
    assert not memory.sharding(small, 4, 80)[0] and memory.sharding(small, 4, 40)[0]  # 36 > 0.9 x 40
    assert not memory.sharding(big, 4, None)[0]  # no GPU memory to compare with (the CPU): DDP
    assert memory.sharding({**small, "train": {**small["train"], "fsdp": True}}, 2, 80) == (
        True,
        "FSDP2 (train.fsdp=true): weights, gradients and optimizer state sharded over 2 processes",
    )
    assert not memory.sharding({**big, "train": {**big["train"], "fsdp": False}}, 4, 80)[0]


def test_a_replicated_run_that_cannot_fit_is_told_to_shard():
    overrides = (
        "compute=a100x2",
        "model=phi3",
        "train=seed_recipe",
        "compute.precision=bf16-mixed",
        "model.attn_implementation=eager",  # the tutorial's attention, which keeps every score
        "plan=true",
        "train.per_device_train_batch_size=8",
    )
    spec = _spec(*overrides, "train.fsdp=false")
    found = [p for p in problems(spec) if p.startswith("train: ")]
    assert found and "it cannot fit; e.g. train.fsdp=true (about" in found[0]
    assert not problems(_spec(*overrides, "train.fsdp=true")) and not problems(_spec(*overrides))  # auto shards


def test_fsdp_with_one_process_and_more_local_processes_than_gpus_are_refused():
    found = "\n".join(problems(_spec("compute=a100", "model=phi3", "train.fsdp=true", "plan=true")))
    assert "train.fsdp: true shards the model over several processes, but this run has one" in found
    # on a CPU any number of processes may train (the tests' gloo runs); compute=local auto is 1 there
    assert not problems(_spec("compute.device=cpu", "compute.processes_per_instance=2", "train.fsdp=true", "plan=true"))
