"""How long does reviewing every config combination take, against one plan? Target: review <= 5x one plan=true.

The review composes all compute x model x data combinations twice (base ref and working tree) and diffs them; it
runs on every push, so it must stay cheap. Both run as fresh processes, taken alternately.
Usage: .venv/bin/python bench/review_overhead.py [repeats]
"""
import sys

from plan_overhead import OVERRIDES, PLAN, ROOT, medians

TARGET = 5.0


def main(repeats: int = 5):
    review = [sys.executable, "-m", "runner.review", "--repo", str(ROOT), "--base", "HEAD"]
    med = medians({"plan": PLAN, "review": review}, repeats)
    ratio = med["review"] / med["plan"]
    print(f"python -m runner.review --base HEAD (27 combinations x 2): median {med['review']:.2f}s over {repeats} runs")
    print(f"python -m runner {' '.join(OVERRIDES)} plan=true:    median {med['plan']:.2f}s")
    print(f"ratio review/plan: {ratio:.2f}x (target <= {TARGET:g}x) -> {'OK' if ratio <= TARGET else 'OVER TARGET'}")
    return ratio


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
