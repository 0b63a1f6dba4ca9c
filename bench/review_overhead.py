"""How long does reviewing every config combination take, against one plan? Target: review <= 5x one plan=true.

The review composes all compute x model x data combinations twice (base ref and working tree) and diffs them; it
runs on every push, so it must stay cheap. Both run as fresh processes, taken alternately. It prints the number of
combinations the review composes (counted from conf/, as the review counts them) and the seconds per composed
combination beside the ratio: the ratio grows with every option added, the seconds per combination should not.
Usage: .venv/bin/python bench/review_overhead.py [repeats]
"""

import sys

from plan_overhead import OVERRIDES, PLAN, ROOT, compare

TARGET = 5.0


def combinations() -> int:
    sys.path.insert(0, str(ROOT))
    from runner.review import options

    count = 1
    for names in options(ROOT / "conf").values():
        count *= len(names)
    return count


def main(repeats: int = 5):
    n = combinations()
    review = [sys.executable, "-m", "runner.review", "--repo", str(ROOT), "--base", "HEAD"]
    name = f"python -m runner.review --base HEAD ({n} combinations x 2)"
    ratio, med = compare(
        (name, review), (f"python -m runner {' '.join(OVERRIDES)} plan=true", PLAN), repeats, TARGET, with_medians=True
    )
    print(f"per composed combination: {1000 * med['measured'] / (2 * n):.1f} ms ({2 * n} compositions)")
    return ratio


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
