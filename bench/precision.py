"""Do the updates land? Training recipes at the tutorial's learning rate, on the CPU, through the trainer's own code.

  python bench/precision.py            every recipe at lr 5e-6 and 2e-5 (about 6 minutes on 2 CPU cores)
  python bench/precision.py --smoke    five recipes, a smaller model, one lr (about a minute; the tests run it)
  python bench/precision.py --phi4mini the reference, the tutorial's recipe and the default at lr 5e-6 on a small
                                       Phi-4-mini-shaped model: GQA, partial rotary, tied embeddings, its template
                                       and pad, composed as model=phi4mini (about 3 minutes)

A small Phi-3 (4 layers, width 256, a 4096-token BPE vocabulary) stands in for a pretrained base: it is trained
first in fp32 at lr 1e-3 on chats whose answers follow one rule (each word of the question -> the next word of a
lexicon). Each recipe then fine-tunes that base for 40 steps on chats that follow another rule (a seeded
permutation of the lexicon) and is evaluated on held-out chats of the new rule. Everything goes through
trainer.fit's setup() and fit(), with the spec composed from conf/ as `python -m runner compute=a100 model=phi3 ...`
composes it: the precision and optimizer come from compute.precision, train.optim and train.optim_args, the keys
a user sets; only the size (steps, rows, lengths) and the device (this CPU, which runs bf16) differ.

For each recipe and lr: eval loss before and after, its share of the fp32 recipe's drop at that lr, the share of
weights that changed at all, and the bytes of training state per parameter (weights, gradients and optimizer
state, measured from the tensors themselves). Fixed seeds: a rerun prints the same numbers.
Results: a table on stdout, bench/out/precision.json and bench/out/precision.png.
"""

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
BASE = ["compute=a100", "model=phi3", "train=seed_recipe"]  # the tutorial's command, its recipe named
RECIPES = {  # name -> (what it is, overrides on top of BASE as a user would type them)
    "fp32": ("fp32 weights, AdamW (the reference)", ["compute.precision=fp32"]),
    "bf16": ("bf16 weights, AdamW (the tutorial)", []),
    "bf16-mixed": ("fp32 master weights, bf16 autocast", ["compute.precision=bf16-mixed"]),
    "kahan": (
        "bf16 weights, Kahan-summed AdamW (torch-optimi)",
        ["+train.optim=stable_adamw", "+train.optim_args='kahan_sum=True'"],
    ),
    "8bit": ("bf16 weights, 8-bit AdamW state (torchao)", ["+train.optim=adamw_torch_8bit"]),
    "8bit-sr": (
        "bf16 weights, 8-bit state, stochastic rounding (torchao)",
        ["+train.optim=adamw_torch_8bit", "+train.optim_args='bf16_stochastic_round=True'"],
    ),
    "4bit-sr": (
        "bf16 weights, 4-bit state, stochastic rounding (torchao)",
        ["+train.optim=adamw_torch_4bit", "+train.optim_args='bf16_stochastic_round=True'"],
    ),
}
REFERENCE = "fp32"
SIZES = {  # model shape, pretraining and fine-tuning sizes
    "full": dict(
        shape=dict(
            hidden_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=1024,
            vocab_size=4096,
            max_position_embeddings=128,
            seed=0,
        ),
        words=1500,
        targets=32,
        pretrain_rows=4800,
        pretrain_steps=300,
        steps=40,
        batch=8,
        eval_rows=64,
        lrs=[5e-6, 2e-5],
        recipes=list(RECIPES),
    ),
    "phi4mini": dict(
        model="phi4mini",
        shape=dict(
            arch="phi4mini",
            hidden_size=192,
            num_hidden_layers=4,
            num_attention_heads=6,
            num_key_value_heads=2,
            partial_rotary_factor=0.75,
            tie_word_embeddings=True,
            intermediate_size=768,
            vocab_size=4096,
            max_position_embeddings=128,
            seed=0,
        ),
        words=1500,
        targets=32,
        pretrain_rows=4800,
        pretrain_steps=300,
        steps=40,
        batch=8,
        eval_rows=64,
        lrs=[5e-6],
        recipes=["fp32", "bf16", "8bit-sr"],
    ),
    "smoke": dict(
        shape=dict(
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=256,
            vocab_size=1024,
            max_position_embeddings=128,
            seed=0,
        ),
        words=300,
        targets=16,
        pretrain_rows=960,
        pretrain_steps=60,
        steps=12,
        batch=8,
        eval_rows=32,
        lrs=[5e-6],
        recipes=["fp32", "bf16", "bf16-mixed", "kahan", "8bit-sr"],
    ),
}
WORDS_PER_CHAT = 10
MAX_LENGTH = 64


def lexicon(n: int) -> list[str]:
    consonants, vowels = "bdfgklmnprstvzh", "aeiou"
    syllables = [c + v for c in consonants for v in vowels]
    return [a + b for a in syllables for b in syllables][:n]


def chats(words: list[str], rule: list[int], n: int, rng: random.Random) -> list[dict]:
    """n chats: the user lists words, the assistant answers each word i with words[rule[i]]."""
    rows = []
    for _ in range(n):
        picks = [rng.randrange(len(words)) for _ in range(WORDS_PER_CHAT)]
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": " ".join(words[i] for i in picks)},
                    {"role": "assistant", "content": " ".join(words[rule[i]] for i in picks)},
                ]
            }
        )
    return rows


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def spec_for(overrides: list[str], model_dir: Path, size: dict, lr: float, steps: int, batch: int) -> dict:
    """The spec `python -m runner <BASE> <overrides>` composes, pointed at model_dir, on this CPU, at this size."""
    from hydra import compose, initialize_config_dir

    from runner.spec import to_spec

    base = [o if not o.startswith("model=") else f"model={size.get('model', 'phi3')}" for o in BASE]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        spec = to_spec(compose("config", overrides=base + overrides))
    spec["model"].update(source="hub", id=str(model_dir))
    if spec["model"].get("chat_template"):  # conf/templates/..., from the repository wherever this runs
        spec["model"]["chat_template"] = str(ROOT / spec["model"]["chat_template"])
    spec["compute"]["device"] = "cpu"
    spec["train"].update(
        learning_rate=lr,
        max_steps=steps,
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=32,
        max_length=MAX_LENGTH,
        packing=False,
        logging_steps=10**6,
        save_steps=10**6,
        eval_strategy="no",
        activation_checkpointing=False,
    )
    return spec


def recipe_key(spec: dict) -> tuple:
    t = spec["train"]
    return spec["compute"]["precision"], t.get("optim"), t.get("optim_args") or None


def defaults_of(models=("phi3", "phi35", "phi4mini")) -> dict:
    """model option -> the (precision, optim, optim_args) it trains with by default on a GPU (compute=a100)."""
    from hydra import compose, initialize_config_dir

    from runner.spec import to_spec

    out = {}
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for m in models:
            out[m] = recipe_key(to_spec(compose("config", overrides=["compute=a100", f"model={m}"])))
    return out


def tensor_bytes(t) -> int:
    """Bytes a tensor holds; a tensor subclass (torchao's quantized optimizer state) counts its inner tensors."""
    if hasattr(t, "__tensor_flatten__") and type(t).__name__ != "Tensor":
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def state_bytes_per_param(trainer) -> float:
    """(weights + gradients + optimizer state) / parameters, from the tensors after training."""
    import torch

    params = [p for p in trainer.model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    weights = sum(tensor_bytes(p) for p in trainer.model.parameters())
    grads = sum(p.numel() * p.element_size() for p in params)  # the same dtype as the weight; freed between steps
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    state = sum(
        tensor_bytes(v) for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.numel() > 1
    )
    return (weights + grads + state) / n


def weights_changed(model, base_dir: Path) -> float:
    """Share of weight elements that differ from the base's, compared in the dtype training kept them in."""
    from safetensors.torch import load_file

    base = {}
    for f in base_dir.glob("*.safetensors"):
        base.update(load_file(f))
    changed = total = 0
    for name, p in model.named_parameters():
        b = base[name].to(p.dtype)
        changed += (p.detach() != b).sum().item()
        total += p.numel()
    return changed / total


def pretrain(work: Path, size: dict, log) -> tuple[Path, list[str], list[int]]:
    """The stand-in base: a tiny Phi-3 trained in fp32 at lr 1e-3 on rule A (word i -> word i+1); cached."""
    from trainer.fit import fit, setup
    from trainer.tiny import build_model, build_tokenizer

    words = lexicon(size["words"])
    n = len(words)
    rng = random.Random(0)
    rule_a = [(i + 1) % n for i in range(n)]
    rows = chats(words, rule_a, size["pretrain_rows"], rng)
    kind = size["shape"].get("arch", "phi3")
    base = work / f"base-{kind}-{size['shape']['hidden_size']}x{size['shape']['num_hidden_layers']}-{n}"
    if not (base / "config.json").is_file():
        t0 = time.time()
        init = work / "init"
        tok = build_tokenizer([m["content"] for r in rows for m in r["messages"]], size["shape"]["vocab_size"], kind)
        model = build_model(tok, size["shape"])
        model.save_pretrained(init)
        tok.save_pretrained(init)
        spec = spec_for(
            ["compute.precision=fp32", "train.lr_scheduler_type=constant"], init, size, 1e-3, size["pretrain_steps"], 16
        )
        spec["train"]["warmup_steps"] = 0
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            job = quiet(
                setup(
                    spec,
                    write(work / "pretrain.jsonl", rows),
                    write(work / "pretrain-eval.jsonl", rows[:64]),
                    Path(tmp),
                    Path(tmp) / "ckpt",
                    None,
                    lambda *_: None,
                )
            )
            m = fit(job, 1, False, lambda *_: None)
            job.trainer.save_model(str(base))
            job.tokenizer.save_pretrained(base)
        log(
            f"[precision] base: {size['pretrain_steps']} fp32 steps at lr 1e-3, rule A eval loss "
            f"{m['eval_loss_before']:.3f} -> {m['eval_loss']:.3f} ({time.time() - t0:.0f}s)"
        )
    # rule B: each word is answered with one of K target words, a change the whole answer distribution shares
    targets = random.Random(1).sample(range(n), size["targets"])
    return base, words, [targets[i % len(targets)] for i in range(n)]


def quiet(job):
    """No progress bar or loss lines: the benchmark prints one line per recipe."""
    from transformers.trainer_callback import ProgressCallback

    job.trainer.remove_callback(ProgressCallback)
    return job


def run_one(name: str, lr: float, base: Path, train_file: Path, eval_file: Path, size: dict, work: Path) -> dict:
    from trainer.fit import fit, setup

    what, overrides = RECIPES[name]
    spec = spec_for(overrides, base, size, lr, size["steps"], size["batch"])
    t0 = time.time()
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        job = quiet(setup(spec, train_file, eval_file, Path(tmp), Path(tmp) / "ckpt", None, lambda *_: None))
        m = fit(job, 1, False, lambda *_: None)
    precision, optim, optim_args = recipe_key(spec)
    return {
        "recipe": name,
        "what": what,
        "lr": lr,
        "precision": precision,
        "optim": optim or "adamw_torch_fused (default)",
        "optim_args": optim_args,
        "overrides": overrides,
        "eval_before": m["eval_loss_before"],
        "eval_after": m["eval_loss"],
        "weights_changed": weights_changed(job.trainer.model, base),
        "state_bytes_per_param": state_bytes_per_param(job.trainer),
        "steps": m["steps"],
        "seconds": time.time() - t0,
        "key": (precision, optim, optim_args or None),
    }


def table(results: list[dict]) -> str:
    lines = [
        f"{'recipe':68} {'lr':>7} {'eval before':>11} {'after':>7} {'of fp32 drop':>12} {'changed':>8} "
        f"{'B/param':>7}  default for"
    ]
    for r in results:
        lines.append(
            f"{r['recipe'] + ': ' + r['what']:68} {r['lr']:7.0e} {r['eval_before']:11.3f} {r['eval_after']:7.3f} "
            f"{r['share_of_fp32_drop']:12.0%} {r['weights_changed']:8.1%} {r['state_bytes_per_param']:7.1f}"
            f"  {', '.join(r['default_for'])}"
        )
    return "\n".join(lines)


def plot(results: list[dict], path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["recipe"] for r in results))
    what = {r["recipe"]: r["what"] for r in results}
    lrs = sorted({r["lr"] for r in results})
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(names) + 1.6))
    height = 0.8 / len(lrs)
    for j, lr in enumerate(lrs):
        got = {r["recipe"]: r for r in results if r["lr"] == lr}
        ys = [i + j * height for i in range(len(names))]
        ax.barh(
            ys,
            [got[n]["share_of_fp32_drop"] * 100 if n in got else 0 for n in names],
            height=height,
            label=f"lr {lr:.0e}",
        )
        for y, n in zip(ys, names):
            if n in got:
                share = max(got[n]["share_of_fp32_drop"] * 100, 0)
                ax.text(share + 1, y, f"{got[n]['state_bytes_per_param']:.0f} B/param", va="center", fontsize=7)
    ax.axvline(90, color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(0, 125)
    ax.set_yticks([i + height * (len(lrs) - 1) / 2 for i in range(len(names))], [what[n] for n in names], fontsize=8)
    ax.set_xlabel("share of the fp32 recipe's eval-loss drop (%)")
    ax.invert_yaxis()
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Do the updates land? 40 fine-tuning steps of a small Phi-3 on the CPU", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="five recipes on a smaller model, one lr (about a minute)")
    p.add_argument("--phi4mini", action="store_true", help="three recipes on a Phi-4-mini-shaped model, lr 5e-6")
    p.add_argument("--recipes", help="comma-separated recipe names (default: all of the size)")
    p.add_argument("--work", default=str(OUT / "work"), help="where the base model and data are kept")
    p.add_argument("--out", default=str(OUT), help="where precision.json and precision.png go")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    which = "smoke" if args.smoke else "phi4mini" if args.phi4mini else "full"
    size = SIZES[which]
    if args.smoke:  # torchao's 8-bit step compiles per parameter shape (~40 s on 2 cores, most of the smoke's time);
        os.environ["TORCHDYNAMO_DISABLE"] = "1"  # eager runs the same optimizer code (its rounding draws differ)
    names = args.recipes.split(",") if args.recipes else size["recipes"]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        print(f"error: unknown recipe(s) {', '.join(unknown)}; known: {', '.join(RECIPES)}", file=sys.stderr)
        return 2
    if REFERENCE not in names:
        names = [REFERENCE, *names]  # every share is of its drop
    work = Path(args.work) / which
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    base, words, perm = pretrain(work, size, print)
    rng = random.Random(2)
    train_file = write(work / "finetune.jsonl", chats(words, perm, size["steps"] * size["batch"], rng))
    eval_file = write(work / "finetune-eval.jsonl", chats(words, perm, size["eval_rows"], rng))
    defaults = defaults_of()
    results = []
    for lr in size["lrs"]:
        for name in names:
            r = run_one(name, lr, base, train_file, eval_file, size, work)
            results.append(r)
            print(
                f"[precision] lr {lr:.0e} {name} ({r['what']}): eval {r['eval_before']:.3f} -> {r['eval_after']:.3f}, "
                f"{r['weights_changed']:.1%} of weights changed, {r['state_bytes_per_param']:.1f} B/param "
                f"({r['seconds']:.0f}s)",
                flush=True,
            )
    for r in results:
        ref = next(x for x in results if x["recipe"] == REFERENCE and x["lr"] == r["lr"])
        drop = ref["eval_before"] - ref["eval_after"]
        r["share_of_fp32_drop"] = (r["eval_before"] - r["eval_after"]) / drop if drop > 0 else float("nan")
        r["default_for"] = sorted(m for m, key in defaults.items() if key == r["key"])
    for r in results:
        r.pop("key")
    print(table(results))
    missing = sorted(m for m, key in defaults.items() if not any(m in r["default_for"] for r in results))
    if missing:
        print(f"(the default recipe of {', '.join(missing)} is not among those run)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / ("precision" if which == "full" else f"precision-{which}")
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2))
    plot(results, stem.with_suffix(".png"))
    print(f"wrote {stem}.json and {stem}.png in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
