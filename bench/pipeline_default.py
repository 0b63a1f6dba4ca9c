"""The whole default pipeline (data -> train -> register -> deploy -> chat), offline on this machine, and the
latency of the endpoint it leaves running. Targets: pipeline under 90 s; latency reported as p50/p95.

Starts from an empty output folder; tears the endpoint down at the end. Also writes a latency histogram
to bench/latency.png. Usage: .venv/bin/python bench/pipeline_default.py [requests]
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 90


def runner(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PF_HOME_DIRECTORY": str(Path(cwd) / ".promptflow")}
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env=env,
        check=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def score(url, key, question, max_new_tokens=32):
    body = json.dumps({"input_data": [question], "params": {"max_new_tokens": max_new_tokens, "do_sample": False}})
    req = urllib.request.Request(
        url, body.encode(), {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    )
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as resp:
        json.loads(resp.read())
    return time.perf_counter() - t0


def main(n: int = 50):
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = runner(cwd=tmp)
        wall = time.perf_counter() - t0
        manifest = json.loads(next(Path(tmp).glob("outputs/*/*/manifest.json")).read_text())
        per_stage = {k: v.get("seconds") for k, v in manifest["stages"].items()}
        dep = manifest["stages"]["deploy"]["outputs"]
        key = Path(dep["key_file"]).read_text().strip()
        question = json.loads(Path(manifest["stages"]["data"]["outputs"]["train_file"]).read_text().splitlines()[0])[
            "prompt"
        ]
        score(dep["url"], key, question)  # warm-up
        lat = sorted(score(dep["url"], key, question) for _ in range(n))
        runner("stages=[teardown]", cwd=tmp)
    p50, p95 = statistics.median(lat), lat[int(0.95 * (n - 1))]
    print("stage seconds:", ", ".join(f"{k} {v}" for k, v in per_stage.items()))
    print(
        f"full default pipeline on {os.cpu_count()} cores: {wall:.1f}s wall; target {TARGET_S}s -> ratio "
        f"{wall / TARGET_S:.2f} ({'OK' if wall <= TARGET_S else 'OVER TARGET'})"
    )
    print(f"endpoint latency, 32 new tokens, {n} sequential requests: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3))
        ax.hist([x * 1000 for x in lat], bins=20)
        ax.set_xlabel("latency (ms), 32 new tokens")
        ax.set_ylabel("requests")
        fig.tight_layout()
        fig.savefig(ROOT / "bench" / "latency.png", dpi=100)
    except ImportError:
        pass
    if "[chat]" not in out.stdout:
        print("warning: the chat stage printed nothing")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)
