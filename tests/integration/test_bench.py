"""The benchmarks in bench/, each run as a person runs it, scaled down to run on the CPU in under a minute."""

import json
import subprocess
import sys

import pytest

from runner import REPO_ROOT

pytestmark = pytest.mark.slow


def bench(script: str, *args) -> subprocess.CompletedProcess:
    """bench/<script> *args from the repository root, as the README runs it; it must exit 0."""
    r = subprocess.run(
        [sys.executable, f"bench/{script}", *map(str, args)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def recipes_smoke(tmp_path, names, *extra):
    """bench/train_recipes.py --smoke for these recipes; its stdout and JSON."""
    r = bench("train_recipes.py", "--smoke", "--work", tmp_path, *extra, *[a for n in names for a in ("--recipe", n)])
    result = json.loads((REPO_ROOT / "bench" / "out" / "train_recipes-smoke.json").read_text())
    assert [x["recipe"] for x in result["recipes"]] == names
    assert (REPO_ROOT / "bench" / "out" / "train_recipes-smoke.png").read_bytes()[:4] == b"\x89PNG"
    return r.stdout, result


def ran(result):
    done = [x for x in result["recipes"] if "skipped" not in x]
    assert all(x["tokens_per_s"] > 0 and x["steps"] == 3 and x["loss"] > 0 for x in done)
    return done


# every recipe, in two parts (each under a minute on 2 cores); the precision check and serving figures in the first
def test_the_recipe_benchmark_runs_the_tutorials_recipe_and_its_speed_ups(tmp_path):
    from bench.train_recipes import RECIPES

    names = list(RECIPES)[:4]
    stdout, result = recipes_smoke(tmp_path, names)
    assert len(ran(result)) == 4 and names[0].startswith("seed") and "tokens/s" in stdout
    # pure bf16 weights lose most updates at lr 5e-6; fp32 master weights keep them
    check = result["precision_check"]
    assert check["bf16 weights"] < 0.5 < check["fp32 master + bf16 autocast"]
    assert set(result["cpu_serving_ms_per_token"]) == {"float32", "bfloat16"}


def test_the_recipe_benchmark_runs_the_other_recipes_and_says_why_it_skips_some(tmp_path):
    from bench.train_recipes import NOT_ON_CPU, RECIPES

    names = list(RECIPES)[4:]
    stdout, result = recipes_smoke(tmp_path, names, "--recipes-only")
    assert {x["recipe"]: x["skipped"] for x in result["recipes"] if "skipped" in x} == NOT_ON_CPU
    assert "skipped: " in stdout and len(ran(result)) == len(names) - len(NOT_ON_CPU) >= 3
    assert any("phi3 default" in x["recipe"] for x in ran(result))


def test_the_precision_benchmark_shows_which_updates_land_and_reruns_to_the_same_numbers(tmp_path):
    """bench/precision.py --smoke: the recipes through the trainer's own setup()/fit(), bf16 on this CPU."""
    from trainer import memory

    out = tmp_path / "out"
    smoke = ("--smoke", "--work", tmp_path / "work")
    bench("precision.py", *smoke, "--out", out)
    results = json.loads((out / "precision-smoke.json").read_text())
    keys = {
        "recipe",
        "lr",
        "eval_before",
        "eval_after",
        "share_of_fp32_drop",
        "weights_changed",
        "state_bytes_per_param",
        "default_for",
    }
    assert all(keys <= set(x) for x in results) and (out / "precision-smoke.png").read_bytes()[:4] == b"\x89PNG"
    got = {x["recipe"]: x for x in results}
    assert got["fp32"]["share_of_fp32_drop"] == 1 and got["fp32"]["eval_after"] < got["fp32"]["eval_before"]
    # bf16 weights and AdamW (the tutorial) at lr 5e-6: most updates round away; fp32 master weights keep them
    assert got["bf16"]["weights_changed"] < 0.2 < 0.8 < got["bf16-mixed"]["weights_changed"]
    assert got["bf16"]["share_of_fp32_drop"] < 0.3 < 0.9 < got["bf16-mixed"]["share_of_fp32_drop"]
    # the bytes measured from the tensors are the estimator's per-parameter state
    for name, precision, optim, args in (
        ("fp32", "fp32", None, None),
        ("bf16", "bf16", None, None),
        ("kahan", "bf16", "stable_adamw", "kahan_sum=True"),
    ):
        weight = 2 if precision == "bf16" else 4
        assert got[name]["state_bytes_per_param"] == pytest.approx(
            2 * weight + memory.optimizer_bytes(optim, args, weight)[0], rel=0.02
        )
    # the phi3/phi35/phi4mini default: 8-bit AdamW state, stochastic rounding onto bf16 weights; 6 bytes a parameter
    assert got["8bit-sr"]["default_for"] == ["phi3", "phi35", "phi4mini"] and not got["bf16"]["default_for"]
    assert got["8bit-sr"]["state_bytes_per_param"] == pytest.approx(
        2 + 2 + memory.optimizer_bytes("adamw_torch_8bit", "bf16_stochastic_round=True", 2)[0], rel=0.05
    )
    assert got["8bit-sr"]["weights_changed"] > 2 * got["bf16"]["weights_changed"]
    # a rerun: the same numbers
    bench("precision.py", *smoke, "--out", tmp_path / "again", "--recipes", "bf16")
    again = {x["recipe"]: x for x in json.loads((tmp_path / "again" / "precision-smoke.json").read_text())}
    for name in ("fp32", "bf16"):
        assert again[name]["eval_after"] == got[name]["eval_after"]
        assert again[name]["weights_changed"] == got[name]["weights_changed"]


def test_the_decode_benchmark_measures_the_endpoint_against_the_plans_bound(tmp_path):
    """bench/serve_decode.py on a one-layer model of Phi-3-mini's width, 8 tokens an answer: it serves the model as
    the deploy stage does and prints the measured tokens/s, the bound and their ratio (figures, not a target)."""
    r = bench("serve_decode.py", 1, 8)
    lines = {line.split(":")[0]: line for line in r.stdout.splitlines() if line.startswith("[decode]")}
    bound = float(r.stdout.split("bound: ")[1].split(" tokens/s")[0])
    single = float(r.stdout.split("one stream: ")[1].split(" tokens/s")[0])
    assert bound > 0 and single > 0 and "% of the bound" in r.stdout and len(lines) >= 1
    # one layer of Phi-3-mini (113M weights) and a 600-token head, 4 bytes each
    assert "weights read per token: 0.43 GiB (fp32)" in r.stdout


def test_the_data_stage_benchmark_runs_the_stage_and_datasets_alone_on_an_ultrachat_shaped_folder(tmp_path):
    """bench/data_stage.py on 2,000 synthetic chats laid out as the hub lays out ultrachat_200k: both sides run and
    their times, peaks and ratios are printed (figures, not a target: the 200,000-chat run is the README's)."""
    r = bench("data_stage.py", 2000, 100)
    assert "[data] 2,000 chats" in r.stdout and "datasets alone" in r.stdout and "the data stage" in r.stdout
    ratios = r.stdout.split("[data] time ")[1]
    assert float(ratios.split("x")[0]) > 0 and "memory " in ratios and "target <= 2.0x" in ratios
