"""How long does reviewing every config combination take, against one plan? Target: review <= 5x one plan=true.

The review composes all compute x model x data combinations twice (base ref and working tree) and diffs them; it
runs on every push, so it must stay cheap. Both run as fresh processes, taken alternately.
Usage: .venv/bin/python bench/review_overhead.py [repeats]
"""
import sys

from plan_overhead import OVERRIDES, PLAN, ROOT, compare

TARGET = 5.0


def main(repeats: int = 5):
    review = [sys.executable, "-m", "runner.review", "--repo", str(ROOT), "--base", "HEAD"]
    return compare(("python -m runner.review --base HEAD (27 combinations x 2)", review),
                   (f"python -m runner {' '.join(OVERRIDES)} plan=true", PLAN), repeats, TARGET)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
