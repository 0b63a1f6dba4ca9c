"""Wall time of the default `python -m runner stages=[data,train]` on this machine. Target: under 45 s.

Each repeat starts from an empty output folder (tiny model built, MLflow store created), as on a fresh machine
after installation. Usage: .venv/bin/python bench/train_default.py [repeats]
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 45


def one_run() -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "runner", "stages=[data,train]"],
            cwd=tmp,
            check=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - t0
        manifest = json.loads(next(Path(tmp).glob("outputs/*/*/manifest.json")).read_text())
    return wall, manifest["stages"]["train"]["outputs"]


def main(repeats: int = 3):
    walls = []
    for i in range(repeats):
        wall, out = one_run()
        walls.append(wall)
        print(
            f"run {i + 1}: {wall:.1f}s wall; training {out['train_runtime_s']:.1f}s, {out['steps']} steps, "
            f"{out['tokens_per_s']:.0f} tokens/s, eval loss {out['eval_loss_before']:.2f} -> {out['eval_loss']:.2f}"
        )
    med = statistics.median(walls)
    print(
        f"default stages=[data,train] on {os.cpu_count()} cores: median {med:.1f}s over {repeats} runs; "
        f"target {TARGET_S}s -> ratio {med / TARGET_S:.2f} ({'OK' if med <= TARGET_S else 'OVER TARGET'})"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
