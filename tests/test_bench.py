"""bench/train_recipes.py --smoke: the real-size recipe comparison, scaled down to run on the CPU."""
import json
import subprocess
import sys

import pytest

from runner import REPO_ROOT

pytestmark = pytest.mark.slow


def test_the_recipe_benchmark_runs_every_recipe_it_can_and_says_why_not_the_others(tmp_path):
    r = subprocess.run([sys.executable, "bench/train_recipes.py", "--smoke", "--work", str(tmp_path)],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((REPO_ROOT / "bench" / "out" / "train_recipes-smoke.json").read_text())
    ran = [x for x in result["recipes"] if "skipped" not in x]
    assert len(ran) >= 6 and all(x["tokens_per_s"] > 0 and x["steps"] == 3 and x["loss"] > 0 for x in ran)
    assert ran[0]["recipe"].startswith("seed") and "tokens/s" in r.stdout and "skipped: " in r.stdout
    # pure bf16 weights lose most updates at lr 5e-6; fp32 master weights keep them
    check = result["precision_check"]
    assert check["bf16 weights"] < 0.5 < check["fp32 master + bf16 autocast"]
    assert set(result["cpu_serving_ms_per_token"]) == {"float32", "bfloat16"}
    assert (REPO_ROOT / "bench" / "out" / "train_recipes-smoke.png").read_bytes()[:4] == b"\x89PNG"
