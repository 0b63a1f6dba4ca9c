"""What the eval stage does on every backend once the figures exist (trainer/evaluate.py wrote them, here or where
the model trained): the optional judge, the lines in the terminal, the warnings, and the stage's outputs."""

import json
from pathlib import Path

KEPT = (
    "base_nll",
    "tuned_nll",
    "base_stop_rate",
    "tuned_stop_rate",
    "rows",
    "samples",
    "tokens",
    "tuned_mean_tokens",
    "reference_mean_tokens",
)


def read(folder: Path) -> tuple[dict, list]:
    metrics = json.loads((Path(folder) / "metrics.json").read_text())
    answers = Path(folder) / "answers.jsonl"
    samples = (
        [json.loads(line) for line in answers.read_text().splitlines() if line.strip()] if answers.is_file() else []
    )
    return metrics, samples


def finish(spec, ctx, folder: Path, log_to=None) -> dict:
    """Judge (when configured), log to the train stage's MLflow run (log_to: (tracking_uri, run_id)), print, warn."""
    from trainer import eval_report, evaluate

    metrics, samples = read(folder)
    verdict = None
    if spec["eval"]["judge"] and samples:
        from .judge import judge

        verdict = judge(spec["eval"]["judge"], samples, ctx.log)
        metrics = {**metrics, "judge": {k: v for k, v in verdict.items() if k != "verdicts"}}
        for s, pair in zip(samples, verdict["verdicts"]):
            s["judge"] = {"tuned_as_A": pair[0], "tuned_as_B": pair[1]}
        evaluate.write(folder, metrics, samples, verdict)
    if log_to and log_to[0] and log_to[1]:
        _log(log_to, metrics, folder)
    for line in eval_report.lines(metrics, verdict):
        ctx.log(f"[eval] {line}")
    for warning in eval_report.warnings(metrics):
        ctx.warn(warning)
    ctx.log(f"[eval] side by side in {Path(folder) / 'report.md'}")
    data = ctx.manifest.outputs("data")
    kept = {k: metrics.get(k) for k in KEPT}
    if verdict:
        kept.update(judge_win_rate=verdict["win_rate"], judge_ci95=verdict["win_rate_ci95"])
    return {
        "dir": str(folder),
        "report": str(Path(folder) / "report.md"),
        **kept,
        "eval_sha256": (data.get("sha256") or {}).get("test.jsonl"),
    }  # the rows these figures are on


def _log(log_to, metrics: dict, folder: Path):
    from trainer import evaluate, tracking

    def log():
        import mlflow

        tracking.point_at(log_to[0])
        with mlflow.start_run(run_id=log_to[1]):
            flat = {**metrics, **{f"judge_{k}": v for k, v in (metrics.get("judge") or {}).items()}}
            evaluate.log_to_mlflow(mlflow, flat, folder)

    tracking.best_effort("log the eval to the train stage's MLflow run", log)


def is_current(outputs, spec, ctx) -> bool:
    return (Path(outputs.get("dir", "")) / "metrics.json").is_file()


def plan(spec, ctx) -> list[str]:
    e, t = spec["eval"], spec["train"]
    test_rows = ctx.manifest.outputs("data").get("test_rows")
    rows = min(e["rows"], test_rows) if test_rows else e["rows"]
    at_most = "" if test_rows else "at most "
    judge = e["judge"]
    return [
        f"adds:   both models (base and fine-tuned) score the assistant tokens of {at_most}{rows} held-out chats "
        f"(up to {rows} x {t['max_length']} tokens, each model) and answer {min(e['samples'], rows)} held-out "
        f"prompts greedily, up to {e['max_new_tokens']} tokens each ({2 * min(e['samples'], rows)} generations)",
        "judge:  "
        + (
            f"{judge['model']} at {judge['base_url']}, {2 * min(e['samples'], rows)} requests (each "
            "sample in both orders)"
            if judge
            else "off (eval.judge: nothing leaves this machine)"
        ),
    ]
