"""Training recipes side by side at Phi-3-mini's real shape: tokens/s, MFU, peak memory, step time, loss at N steps.

  python bench/train_recipes.py             Phi-3-mini's shape (3.8B parameters, random weights) at 2048 tokens, GPU
  python bench/train_recipes.py --smoke     a scaled-down shape on the CPU in under a minute (what tests and CI run)

Every recipe trains through trainer.fit's setup() and fit(), the code `python -m trainer` runs, on the shipped
sample's chats repeated, same seed, same steps; on a GPU each recipe runs in its own process (clean peak memory).
MFU = tokens/s x (6 N + 12 L d s) / peak FLOP/s: N parameters, L layers, d hidden size, s sequence length (forward
and backward; attention scores at full s), against the GPU's dense bf16 peak (H100 SXM 989e12, A100 312e12).
Also: --precision-check (share of weights that 10 AdamW steps at lr 5e-6 change: bf16 weights vs fp32 master
weights with bf16 autocast) and the CPU serving check (ms per generated token, float32 vs bfloat16).
Results: a table on stdout, JSON and a PNG in bench/out/.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
SHAPES = {  # Phi3Config fields
    "phi3-mini": dict(
        hidden_size=3072,
        num_hidden_layers=32,
        num_attention_heads=32,
        intermediate_size=8192,
        vocab_size=32064,
        max_position_embeddings=4096,
    ),
    "smoke": dict(
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        vocab_size=32064,
        max_position_embeddings=512,
    ),
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
SDPA_BFD = ({"attn_implementation": "sdpa"}, {"packing_strategy": "bfd"})
RECIPES = {  # name -> (model overrides, train overrides, precision); the seed recipe is the tutorial's
    "seed (eager, wrapped rows, ckpt)": ({"attn_implementation": "eager"}, {"packing_strategy": "wrapped"}, "bf16"),
    "sdpa": ({"attn_implementation": "sdpa"}, {"packing_strategy": "wrapped"}, "bf16"),
    "sdpa + bfd padding-free": (*SDPA_BFD, "bf16"),
    "sdpa + bfd, no ckpt": (SDPA_BFD[0], {**SDPA_BFD[1], "activation_checkpointing": False}, "bf16"),
    "sdpa + bfd + fused AdamW": (SDPA_BFD[0], {**SDPA_BFD[1], "optim": "adamw_torch_fused"}, "bf16"),
    "sdpa + bfd + torch.compile": (SDPA_BFD[0], {**SDPA_BFD[1], "torch_compile": True}, "bf16"),
    "sdpa + bfd + Liger kernels": (SDPA_BFD[0], {**SDPA_BFD[1], "use_liger_kernel": True}, "bf16"),
    "flash-attn 2 + bfd": ({"attn_implementation": "flash_attention_2"}, SDPA_BFD[1], "bf16"),
    "sdpa + bfd, fp32 master (bf16-mixed)": (*SDPA_BFD, "bf16-mixed"),
    "eager + bfd, 8-bit AdamW + SR (phi3 default)": (
        {"attn_implementation": "eager"},
        {"packing_strategy": "bfd", "optim": "adamw_torch_8bit", "optim_args": "bf16_stochastic_round=True"},
        "bf16",
    ),
    "sdpa + bfd, 8-bit AdamW + SR": (
        SDPA_BFD[0],
        {**SDPA_BFD[1], "optim": "adamw_torch_8bit", "optim_args": "bf16_stochastic_round=True"},
        "bf16",
    ),
}
NOT_ON_CPU = {
    "sdpa + bfd + torch.compile": "compiling takes minutes on 2 CPU cores",
    "sdpa + bfd + Liger kernels": "Triton kernels: GPU only",
    "flash-attn 2 + bfd": "flash-attn: GPU only",
}
NEEDS = {"sdpa + bfd + Liger kernels": "liger_kernel", "flash-attn 2 + bfd": "flash_attn"}  # recipe -> module


def spec_for(recipe: str, model_dir: Path, device: str, steps: int, max_length: int, batch: int) -> dict:
    """The composed spec of model=phi3 train=seed_recipe (the tutorial's), pointed at the random model, with the
    recipe's changes (model=phi3 alone picks bf16_8bit_sr: every recipe would run torchao's 8-bit optimizer)."""
    from hydra import compose, initialize_config_dir

    from runner.spec import to_spec

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        spec = to_spec(compose("config", overrides=["model=phi3", "train=seed_recipe"]))
    model, train, precision = RECIPES[recipe]
    spec["model"].update(source="hub", id=str(model_dir), **model)
    spec["compute"].update(device=device, precision=precision if device == "cuda" else "fp32")
    spec["train"].update(
        max_length=max_length,
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=batch,
        max_steps=steps,
        logging_steps=1,
        save_steps=10_000,
        eval_strategy="no",
        include_num_input_tokens_seen=True,
        warmup_steps=0,
        **train,
    )
    return spec


def build(work: Path, shape: str) -> tuple[Path, Path]:
    """A random Phi3ForCausalLM of the shape with the tiny model's tokenizer, and the sample's chats x 20."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    from trainer.chats import load
    from trainer.tiny import build_tokenizer, chat_texts, stop_ids

    model_dir, data = work / f"model-{shape}-stops", work / "chats.jsonl"  # -stops: eos is <|end|> (audit)
    rows = load(ROOT / "runner" / "samples" / "chat_sample.jsonl")
    data.write_text("".join(json.dumps(r) + "\n" for r in rows * 20))
    if not (model_dir / "config.json").is_file():
        tok = build_tokenizer(chat_texts(rows), 1000)
        torch.manual_seed(0)
        s = SHAPES[shape]
        config = Phi3Config(
            **s,
            num_key_value_heads=s["num_attention_heads"],
            pad_token_id=tok.pad_token_id,
            eos_token_id=stop_ids(tok),  # generation stops at <|end|>, as the template audit requires
            bos_token_id=tok.eos_token_id,
            original_max_position_embeddings=s["max_position_embeddings"],
            tie_word_embeddings=False,
        )
        Phi3ForCausalLM(config).to(torch.bfloat16).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
    return model_dir, data


def run_one(recipe: str, args) -> dict:
    import torch

    from trainer.fit import fit, setup

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and recipe in NOT_ON_CPU:
        return {"recipe": recipe, "skipped": NOT_ON_CPU[recipe]}
    if recipe in NEEDS:
        import importlib.util

        if importlib.util.find_spec(NEEDS[recipe]) is None:
            return {"recipe": recipe, "skipped": f"{NEEDS[recipe]} is not installed"}
    work = Path(args.work)
    model_dir, data = build(work, args.shape)
    spec = spec_for(recipe, model_dir, device, args.steps, args.max_length, args.batch)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        job = setup(
            spec,
            data,
            ROOT / "runner" / "samples" / "chat_sample.jsonl",
            Path(tmp),
            Path(tmp) / "ckpt",
            None,
            lambda *_: None,
        )
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        metrics = fit(job, spec["train"]["num_train_epochs"], False, lambda *_: None)
    state = job.trainer.state
    tokens_s = state.num_input_tokens_seen / max(metrics["train_runtime_s"], 1e-9)
    s = SHAPES[args.shape]
    n = sum(p.numel() for p in job.trainer.model.parameters())
    flops_per_token = 6 * n + 12 * s["num_hidden_layers"] * s["hidden_size"] * args.max_length
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    memory = (
        torch.cuda.max_memory_allocated()
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    from trainer.memory import for_spec

    estimate = for_spec(spec, device)
    return {
        "recipe": recipe,
        "device": name,
        "params": n,
        "tokens_per_s": tokens_s,
        "estimated_peak_gib": estimate.total / 2**30 if estimate else None,
        "mfu": tokens_s * flops_per_token / peak if peak else None,
        "peak_memory_gib": memory / 2**30,
        "step_s": metrics["train_runtime_s"] / max(state.global_step, 1),
        "steps": state.global_step,
        "loss": losses[-1] if losses else None,
    }


def precision_check(shape: str, steps: int = 10, lr: float = 5e-6) -> dict:
    """Share of weights that `steps` AdamW steps at lr change: bf16 weights vs fp32 master + bf16 autocast.

    bf16 keeps 8 bits of mantissa: an update smaller than about 1/256 of a weight rounds away.
    """
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    s = dict(SHAPES[shape], num_hidden_layers=min(SHAPES[shape]["num_hidden_layers"], 2))  # 2 layers tell it
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (2, 128), device=device)
    out = {}
    for name, dtype, autocast in (
        ("bf16 weights", torch.bfloat16, False),
        ("fp32 master + bf16 autocast", torch.float32, True),
    ):
        torch.manual_seed(0)
        model = Phi3ForCausalLM(Phi3Config(**s, num_key_value_heads=s["num_attention_heads"])).to(device, dtype)
        before = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        for _ in range(steps):
            with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        changed = sum((p.detach() != b).sum().item() for p, b in zip(model.parameters(), before))
        out[name] = changed / sum(b.numel() for b in before)
    return out


def cpu_serving(shape: str, new_tokens: int = 16) -> dict:
    """Milliseconds per generated token on the CPU, float32 vs bfloat16 (backs the deployment's float32)."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    s = (
        SHAPES[shape]
        if shape == "smoke"
        else dict(SHAPES[shape], hidden_size=1024, num_hidden_layers=8, num_attention_heads=16, intermediate_size=2816)
    )
    torch.manual_seed(0)
    base = Phi3ForCausalLM(Phi3Config(**s, num_key_value_heads=s["num_attention_heads"])).eval()
    prompt = torch.randint(0, 1000, (1, 64))
    out = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        model = base.to(dtype)
        with torch.inference_mode():
            model.generate(prompt, max_new_tokens=2, do_sample=False)  # warm up
            t0 = time.perf_counter()
            model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        out[name] = (time.perf_counter() - t0) / new_tokens * 1000
    return out


def table(results: list[dict]) -> str:
    lines = [f"{'recipe':46} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>9} {'est. GiB':>9} {'step s':>8} {'loss@N':>8}"]
    for r in results:
        if "skipped" in r:
            lines.append(f"{r['recipe']:46} skipped: {r['skipped']}")
            continue
        mfu = f"{r['mfu']:.0%}" if r["mfu"] is not None else "n/a"
        est = f"{r['estimated_peak_gib']:9.2f}" if r.get("estimated_peak_gib") is not None else f"{'n/a':>9}"
        lines.append(
            f"{r['recipe']:46} {r['tokens_per_s']:10.0f} {mfu:>6} {r['peak_memory_gib']:9.2f} {est} "
            f"{r['step_s']:8.3f} {r['loss']:8.4f}"
        )
    return "\n".join(lines)


def plot(results: list[dict], path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ran = [r for r in results if "skipped" not in r]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(ran) + 1.2))
    ax.barh([r["recipe"] for r in ran], [r["tokens_per_s"] for r in ran])
    ax.set_xlabel(f"tokens/s ({ran[0]['device']})")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="scaled-down shape on the CPU, under a minute")
    p.add_argument("--steps", type=int, help="optimizer steps per recipe (default 20, smoke 3)")
    p.add_argument("--recipes", help="comma-separated names (default: all)")
    p.add_argument("--recipe", action="append", default=[], help="a name, which may hold commas (repeatable)")
    p.add_argument("--recipes-only", action="store_true", help="skip the precision check and the CPU serving figures")
    p.add_argument("--one", help=argparse.SUPPRESS)  # a child process: run this recipe, print its JSON
    p.add_argument("--shape", default="phi3-mini", choices=SHAPES)
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--work", default=str(OUT / "work"))
    args = p.parse_args(argv)
    import torch

    if not args.smoke and not args.one and not torch.cuda.is_available():
        print("[bench] no GPU here: running --smoke (Phi-3-mini's shape needs a GPU)", flush=True)
        args.smoke = True
    if args.smoke:
        args.shape, args.max_length, args.batch, args.steps = "smoke", 128, 2, args.steps or 3
        if not torch.cuda.is_available():  # torchao's 8-bit step compiles per parameter shape: ~40 s on 2 cores,
            os.environ["TORCHDYNAMO_DISABLE"] = "1"  # far longer than the smoke's 3 steps; eager, the same updates
    args.steps = args.steps or 20
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return 0
    names = (args.recipes.split(",") if args.recipes else []) + args.recipe or list(RECIPES)
    if unknown := [n for n in names if n not in RECIPES]:
        print(f"error: unknown recipe(s) {unknown}; choose from {list(RECIPES)}", file=sys.stderr)
        return 2
    results = []
    for name in names:
        t0 = time.time()
        if torch.cuda.is_available():  # its own process: peak memory and compile caches per recipe
            cmd = [
                sys.executable,
                __file__,
                "--one",
                name,
                "--shape",
                args.shape,
                "--steps",
                str(args.steps),
                "--max-length",
                str(args.max_length),
                "--batch",
                str(args.batch),
                "--work",
                args.work,
            ]
            r = subprocess.run(cmd, capture_output=True, text=True)
            result = (
                json.loads(r.stdout.strip().splitlines()[-1])
                if r.returncode == 0
                else {"recipe": name, "skipped": f"failed: {(r.stderr.strip().splitlines() or ['?'])[-1][:160]}"}
            )
        else:
            result = run_one(name, args)
        results.append(result)
        print(f"[bench] {name}: {'skipped' if 'skipped' in result else 'done'} in {time.time() - t0:.1f}s", flush=True)
    print(table(results))
    if not torch.cuda.is_available():
        print(
            "(CPU: every recipe runs in fp32 to be quick; peak GiB is the process's resident memory, est. GiB "
            "the estimate of tensors alone (bench/precision.py and tests/unit/test_memory.py check it on the CPU); "
            "MFU needs a GPU's peak)"
        )
    check = serving = None
    if not args.recipes_only:
        check = precision_check(args.shape)
        print(
            "share of weights changed by 10 AdamW steps at lr 5e-6: "
            + ", ".join(f"{k} {v:.1%}" for k, v in check.items())
        )
        serving = cpu_serving(args.shape)
        print("CPU generation, ms per token: " + ", ".join(f"{k} {v:.1f}" for k, v in serving.items()))
    OUT.mkdir(exist_ok=True)
    stem = OUT / f"train_recipes-{args.shape}"
    stem.with_suffix(".json").write_text(
        json.dumps({"recipes": results, "precision_check": check, "cpu_serving_ms_per_token": serving}, indent=2)
    )
    plot(results, stem.with_suffix(".png"))
    print(f"wrote {stem}.json and {stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
