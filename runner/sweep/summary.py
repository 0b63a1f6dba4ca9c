"""The sweep's summary at its root: sweep.md and sweep.csv (a row per point), sweep.png (eval loss against
training rows), printed at the end. Eval losses are compared only when measured on the same eval rows."""

import csv
import io
import os
from pathlib import Path

from common.files import write_atomic

from ..manifest import Manifest
from ..spec.settle import key_of
from . import deploy_stages, point_command

COLUMNS = [
    "point",
    "status",
    "train rows",
    "eval rows",
    "eval loss before",
    "eval loss after",
    "base NLL",
    "tuned NLL",
    "base stops",
    "tuned stops",
    "train time (s)",
    "tokens/s",
    "cost (USD)",
    "eval set",
    "run directory",
]


def row_of(name: str, run_dir: Path) -> dict:
    """A point's row. Its eval losses count only when its training finished on the eval rows its data stage now
    holds (a point whose data was redone after it trained shows no loss until it trains again)."""
    m = Manifest(run_dir)
    data, train = m.outputs("data"), m.outputs("train")
    status = {s: m.entry(s).get("status") for s in ("data", "train", "eval", "register")}
    last = next((f"{s} {st}" for s, st in reversed(status.items()) if st), "not run")
    eval_set = (data.get("eval") or {}).get("sha256")
    trained = status["train"] == "done" and train.get("eval_sha256") is not None
    if trained and train["eval_sha256"] != eval_set:
        trained, last = False, "train out of date (its data changed)"
    figures = train if trained else {}
    # the eval stage's figures (base against fine-tuned), when it ran on this training and these eval rows
    e = m.outputs("eval") if trained and m.entry("eval").get("status") == "done" else {}
    e = e if e.get("eval_sha256") == eval_set else {}
    return {
        "point": name,
        "status": last,
        "train rows": data.get("train_rows"),
        "eval rows": data.get("test_rows"),
        "eval loss before": figures.get("eval_loss_before"),
        "eval loss after": figures.get("eval_loss"),
        "base NLL": e.get("base_nll"),
        "tuned NLL": e.get("tuned_nll"),
        "base stops": _rate(e.get("base_stop_rate")),
        "tuned stops": _rate(e.get("tuned_stop_rate")),
        "train time (s)": figures.get("train_runtime_s"),
        "tokens/s": figures.get("tokens_per_s"),
        "cost (USD)": figures.get("cost_usd"),
        "eval set": eval_set,
        "run directory": str(run_dir),
        "registered": m.entry("register").get("status") == "done",
    }


def _rate(value) -> str | None:
    return None if value is None else f"{100 * value:.0f} %"


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def summarize(sweep_dir: Path, points, out=print) -> dict:
    """Write sweep.md, sweep.csv and sweep.png at the sweep's root and print the table.

    points: [{"name", "overrides", "run_dir"}]. Eval losses are compared only when every point was evaluated on
    the same rows (the eval set's sha256 in each manifest); otherwise the table says why and no point is picked.
    """
    sweep_dir = Path(sweep_dir)
    rows = [row_of(p["name"], Path(p["run_dir"])) for p in points]
    for r in rows:
        r["run directory"] = os.path.relpath(r["run directory"], sweep_dir)
    done = [r for r in rows if r["eval loss after"] is not None]
    eval_sets = {r["eval set"] for r in done}
    comparable = len(eval_sets) == 1
    best = min(done, key=lambda r: r["eval loss after"]) if comparable and done else None
    for r in rows:
        r["eval set"] = (r["eval set"] or "")[:12]

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(sweep_dir / "sweep.csv", buf.getvalue())

    table = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    table += ["| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    notes = []
    if not comparable and len(eval_sets) > 1:
        notes.append(
            f"Not compared: the points were evaluated on {len(eval_sets)} different eval sets (column 'eval "
            "set'), so their eval losses say nothing about the training data. Re-run the sweep with "
            "data.eval=fixed (the default in -m sweeps) to evaluate every point on the same rows."
        )
    if any(key_of(o).startswith("azure.") for p in points for o in p["overrides"]):
        notes.append(
            "azure.* values given on the command line are left out of the commands here: export them in "
            "your shell (AZURE_SUBSCRIPTION_ID, ...)."
        )
    plot = plot_losses(rows, sweep_dir / "sweep.png") if comparable and done else None
    if plot is None:
        (sweep_dir / "sweep.png").unlink(missing_ok=True)  # a plot of an earlier sweep would mislead
    if best:
        point = next(p for p in points if p["name"] == best["point"])
        notes.append(
            f"Lowest eval loss: {best['point']} ({best['eval loss after']:.4f}), every point on the same "
            f"{best['eval rows']} eval rows (sha256 {best['eval set']}...)."
        )
        stages = deploy_stages(best["registered"])
        notes.append(f"Deploy it: {point_command(point['overrides'], stages)}")
        notes.append(f"Stop it later: {point_command(point['overrides'], 'teardown')}")
    text = (
        "\n".join(
            [
                "# Sweep summary",
                "",
                *table,
                "",
                *notes,
                *(["", f"![eval loss against training rows]({plot.name})"] if plot else []),
            ]
        )
        + "\n"
    )
    write_atomic(sweep_dir / "sweep.md", text)
    out(
        "\n".join(
            [
                "",
                "sweep summary:",
                *table,
                *notes,
                f"wrote {sweep_dir / 'sweep.md'}, sweep.csv" + (", sweep.png" if plot else ""),
            ]
        )
    )
    return {"rows": rows, "best": best, "comparable": comparable, "plot": plot}


def plot_losses(rows, path: Path) -> Path | None:
    pts = sorted(
        (r["train rows"], r["eval loss after"], r["eval loss before"], r["point"])
        for r in rows
        if r["eval loss after"] is not None and r["train rows"]
    )
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    x = [p[0] for p in pts]
    ax.plot(x, [p[1] for p in pts], "o-", label="eval loss after training")
    before = [(p[0], p[2]) for p in pts if p[2] is not None]
    if before:
        ax.plot(*zip(*before), "x--", color="grey", label="eval loss before training")
    for n, loss, _, name in pts:
        ax.annotate(name, (n, loss), textcoords="offset points", xytext=(4, 6), fontsize=7)
    ax.margins(x=0.15, y=0.12)
    if x[-1] > 10 * max(x[0], 1):
        ax.set_xscale("log")
    ax.set_xlabel("training rows")
    ax.set_ylabel("eval loss (same eval rows for every point)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")  # the pattern rundir's stale-temp sweep removes
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path
