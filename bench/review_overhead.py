"""How long does reviewing every config combination take, against one plan? Target: review <= 5x one plan=true.

The review composes all compute x model x data combinations in the working tree, then at the base ref only those
that read a file the change touched, and diffs them; it runs on every push, so it must stay cheap. Two cases, each
against one plan=true, all as fresh processes taken in turn: a push that changes nothing under conf/ (one
composition per combination), and the worst case, a change to conf/config.yaml, which every combination reads (two
per combination). It prints the
number of combinations (counted from conf/, as the review counts them) and the seconds per composed combination
beside the ratio: the ratio grows with every option added, the seconds per combination should not.
Usage: .venv/bin/python bench/review_overhead.py [repeats]
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from plan_overhead import PLAN, ROOT, medians

TARGET = 5.0


def combinations() -> int:
    sys.path.insert(0, str(ROOT))
    from runner.review import combinations

    return len(combinations(ROOT / "conf"))


def repo_with_a_change_everything_reads(into: Path) -> Path:
    """A git repository holding conf/ and the spec schema, committed, then conf/config.yaml edited (a comment)."""
    shutil.copytree(ROOT / "conf", into / "conf")
    (into / "runner").mkdir()
    shutil.copy(ROOT / "runner" / "spec.schema.json", into / "runner")
    for cmd in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "b"],
    ):
        subprocess.run(["git", *cmd], cwd=into, check=True)
    with open(into / "conf" / "config.yaml", "a") as f:
        f.write("# a change every combination reads\n")
    return into


def main(repeats: int = 5):
    n = combinations()
    with tempfile.TemporaryDirectory() as tmp:
        changed = repo_with_a_change_everything_reads(Path(tmp))
        review = [sys.executable, "-m", "runner.review", "--base", "HEAD", "--repo"]
        med = medians({"none": [*review, str(ROOT)], "all": [*review, str(changed)], "plan": PLAN}, repeats)
    print(f"one plan=true: median {med['plan']:.3f}s over {repeats} runs")
    ratios = []
    for case, what, compositions in (
        ("none", "no change under conf/", n),
        ("all", "a change to conf/config.yaml, read by every combination", 2 * n),
    ):
        ratio = med[case] / med["plan"]
        ratios.append(ratio)
        print(
            f"python -m runner.review, {what}: median {med[case]:.3f}s, {ratio:.2f}x one plan "
            f"(target <= {TARGET:g}x) -> {'OK' if ratio <= TARGET else 'OVER TARGET'}; {n} combinations, "
            f"{compositions} compositions, {1000 * med[case] / compositions:.1f} ms per composition"
        )
    return max(ratios)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
