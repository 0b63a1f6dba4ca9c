"""Does the data stage scale? `stages=[data] data.percent=100` on an ultrachat-shaped dataset, against `datasets`
alone doing the same slice, seeded 80/20 split and JSONL writes. Targets: at most 1.5x its time, 2x its peak memory.

The dataset is synthetic but laid out like HuggingFaceH4/ultrachat_200k on the hub (data/train_sft-*.parquet and
data/test_sft-*.parquet, columns prompt, prompt_id, messages): 200,000 chats of 2-6 turns of word-salad text, read
through data.dataset=<folder> as the hub's would be. Both sides run as fresh processes, each measured by its peak
resident memory (the kernel's ru_maxrss of the child) and its wall time; the data stage keeps every row check.
Usage: .venv/bin/python bench/data_stage.py [chats] [percent]
"""

import hashlib
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIME_TARGET, MEMORY_TARGET = 1.5, 2.0
WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so no what can more out up some could them"
).split()

BARE = """
import sys, datasets
datasets.disable_progress_bars()
folder, percent, out = sys.argv[1], sys.argv[2], sys.argv[3]
split = "train_sft" if percent == "100" else f"train_sft[:{percent}%]"
ds = datasets.load_dataset(folder, split=split).select_columns(["messages"])
parts = ds.train_test_split(test_size=0.2, seed=0)
parts["train"].to_json(f"{out}/train.jsonl", lines=True, force_ascii=False)
parts["test"].to_json(f"{out}/test.jsonl", lines=True, force_ascii=False)
"""


def chat(rng: random.Random) -> dict:
    def text(n):
        return " ".join(rng.choice(WORDS) for _ in range(n))

    messages = []
    for _ in range(rng.randint(1, 3)):  # 2-6 turns
        messages.append({"role": "user", "content": text(rng.randint(8, 60))})
        messages.append({"role": "assistant", "content": text(rng.randint(60, 260))})
    prompt = messages[0]["content"]
    return {"prompt": prompt, "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(), "messages": messages}


def build(folder: Path, n: int) -> Path:
    """The synthetic dataset, laid out as the hub lays out ultrachat_200k (cached in folder by its size)."""
    import datasets

    target = folder / f"ultrachat-shaped-{n}"
    if (target / ".complete").is_file():
        return target
    (target / "data").mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for split, rows in (("train_sft", n), ("test_sft", max(1, n // 10))):
        datasets.Dataset.from_generator(lambda rows=rows: (chat(rng) for _ in range(rows))).to_parquet(
            str(target / "data" / f"{split}-00000-of-00001.parquet")
        )
    (target / ".complete").write_text("")
    return target


PEAK = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, "
    "stderr=subprocess.STDOUT, text=True); print(r.stdout[-3000:] if r.returncode else '', "
    "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)"
)


def measured(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float]:
    """(seconds, peak resident GiB) of one command, run under a wrapper process of its own, so the kernel's peak of
    its children is that command's alone."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", PEAK, *cmd], cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    *said, peak_kib, code = r.stdout.split()
    if r.returncode or code != "0":
        raise SystemExit(f"error: {' '.join(cmd[:4])} failed:\n{' '.join(said)}{r.stderr[-2000:]}")
    return seconds, int(peak_kib) / 2**20  # KiB -> GiB


def main(n: int = 200_000, percent: int = 100) -> dict:
    cache = ROOT / "bench" / "out" / "work"
    cache.mkdir(parents=True, exist_ok=True)
    print(f"[data] building {n:,} ultrachat-shaped chats (cached under {cache})", flush=True)
    folder = build(cache, n)
    size = sum(p.stat().st_size for p in (folder / "data").glob("*.parquet"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bare_out = tmp / "bare"
        bare_out.mkdir()
        bare = measured([sys.executable, "-c", BARE, str(folder), str(percent), str(bare_out)], tmp, env)
        stage = measured(
            [sys.executable, "-m", "runner", "model=tiny", "data=1pct", f"data.dataset={folder}"]
            + [f"data.percent={percent}", "stages=[data]", f"run.output_root={tmp / 'outputs'}"],
            tmp,
            env,
        )
    t_ratio, m_ratio = stage[0] / bare[0], stage[1] / bare[1]
    print(f"[data] {n:,} chats ({size / 2**20:.0f} MB of parquet), data.percent={percent}")
    print(f"[data] datasets alone (slice, seeded 80/20 split, JSONL): {bare[0]:.1f} s, peak {bare[1]:.2f} GiB")
    print(f"[data] the data stage (every row checked too):           {stage[0]:.1f} s, peak {stage[1]:.2f} GiB")
    print(
        f"[data] time {t_ratio:.2f}x (target <= {TIME_TARGET}x) -> {'OK' if t_ratio <= TIME_TARGET else 'OVER'}; "
        f"memory {m_ratio:.2f}x (target <= {MEMORY_TARGET}x) -> {'OK' if m_ratio <= MEMORY_TARGET else 'OVER'}"
    )
    return {"stage": stage, "bare": bare, "time_ratio": t_ratio, "memory_ratio": m_ratio}


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
