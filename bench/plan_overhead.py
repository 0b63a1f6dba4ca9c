"""How much does validating and planning add to composing? Target: plan <= 1.5x a bare Hydra app.

Both run as fresh processes, taken alternately so machine noise hits both alike.
Usage: .venv/bin/python bench/plan_overhead.py [repeats]
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OVERRIDES = ["compute=a100", "model=phi35", "data=1pct"]


def timed(cmd, cwd) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


PLAN = [sys.executable, "-m", "runner", *OVERRIDES, "plan=true"]


def medians(commands: dict, repeats: int) -> dict:
    """{name: median seconds}: each command as a fresh process, taken in turn so noise hits all alike."""
    with tempfile.TemporaryDirectory() as tmp:
        for cmd in commands.values():
            timed(cmd, tmp)  # warm the file cache
        runs = {name: [] for name in commands}
        for _ in range(repeats):
            for name, cmd in commands.items():
                runs[name].append(timed(cmd, tmp))
    return {name: statistics.median(v) for name, v in runs.items()}


def compare(
    measured: tuple[str, list], baseline: tuple[str, list], repeats: int, target: float, with_medians: bool = False
):
    """Time both commands in turn, print their medians and the ratio against the target; return the ratio (and the
    medians, with_medians=True)."""
    med = medians({"measured": measured[1], "baseline": baseline[1]}, repeats)
    ratio = med["measured"] / med["baseline"]
    print(f"{measured[0]}: median {med['measured']:.3f}s over {repeats} runs")
    print(f"{baseline[0]}: median {med['baseline']:.3f}s")
    print(f"ratio: {ratio:.2f}x (target <= {target:g}x) -> {'OK' if ratio <= target else 'OVER TARGET'}")
    return (ratio, med) if with_medians else ratio


def main(repeats: int = 10):
    bare = [sys.executable, str(ROOT / "bench" / "bare_hydra_app.py"), *OVERRIDES, "hydra.run.dir=bare"]
    return compare(
        (f"python -m runner {' '.join(OVERRIDES)} plan=true", PLAN),
        ("bare Hydra app composing the same conf/", bare),
        repeats,
        1.5,
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
