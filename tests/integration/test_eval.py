"""The eval stage: the fine-tuned tiny model against its base on the held-out chats, the report, MLflow, the warnings,
and the optional judge against a real local OpenAI-compatible endpoint (this project's own)."""

import copy
import json
import os
import time
from pathlib import Path

import pytest

from runner.app import execute
from runner.stages import judge as judging
from trainer import eval_report

from ..support import _endpoint as ep
from ..support._endpoint import Server

KEYS = {
    "base_nll",
    "tuned_nll",
    "base_stop_rate",
    "tuned_stop_rate",
    "rows",
    "samples",
    "tokens",
    "max_new_tokens",
    "base_mean_tokens",
    "tuned_mean_tokens",
    "reference_mean_tokens",
}


@pytest.fixture(scope="module")
def evaluated(trained_run):
    """The eval stage run once on the session's trained tiny model: (spec, run_dir, manifest, seconds, printed)."""
    spec, run_dir, _ = trained_run
    spec = {**copy.deepcopy(spec), "stages": ["eval"]}
    printed = []
    t0 = time.time()
    manifest = execute(spec, run_dir, out=printed.append)
    return spec, run_dir, manifest, time.time() - t0, printed


def test_the_fine_tuned_model_beats_its_base_and_stops(evaluated):
    spec, run_dir, manifest, seconds, printed = evaluated
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert KEYS <= set(metrics) and metrics["rows"] == manifest["stages"]["data"]["outputs"]["test_rows"] == 20
    assert metrics["tuned_nll"] < metrics["base_nll"]  # a random base: about ln(600)
    assert metrics["samples"] == 20 and metrics["tuned_stop_rate"] > metrics["base_stop_rate"]
    assert 0 < metrics["tuned_mean_tokens"] < spec["eval"]["max_new_tokens"] == metrics["base_mean_tokens"]
    print(f"eval stage on the tiny default: {seconds:.1f} s")  # README: under 15 s on 2 cores
    lines = [p for p in printed if p.startswith("[eval] ")]
    assert any(f"base {metrics['base_nll']:.3f} -> fine-tuned {metrics['tuned_nll']:.3f}" in p for p in lines)
    assert any("stops within 128 tokens: base 0 % -> fine-tuned" in p for p in lines)
    outputs = manifest["stages"]["eval"]["outputs"]
    assert (
        outputs["tuned_nll"] == metrics["tuned_nll"]
        and outputs["eval_sha256"] == manifest["stages"]["data"]["outputs"]["sha256"]["test.jsonl"]
    )


def test_the_report_holds_the_answers_side_by_side(evaluated):
    _, run_dir, manifest, _, _ = evaluated
    report = (run_dir / "eval" / "report.md").read_text()
    samples = [json.loads(line) for line in (run_dir / "eval" / "answers.jsonl").read_text().splitlines()]
    test_rows = [
        json.loads(line) for line in Path(manifest["stages"]["data"]["outputs"]["test_file"]).read_text().splitlines()
    ]
    assert len(samples) == 20 and "# Did it learn?" in report and report.count("| fine-tuned | ") == 20
    for s, row in zip(samples, test_rows):
        assert s["reference"] == next(m["content"] for m in row["messages"] if m["role"] == "assistant")
        assert s["tuned"]["stopped"] and f"| reference | {s['reference'][:40]}" in report.replace("\\|", "|")
        assert not s["base"]["stopped"] and s["base"]["tokens"] == 128


def test_the_figures_go_to_the_train_stages_mlflow_run(evaluated):
    _, _, manifest, _, _ = evaluated
    from mlflow import MlflowClient

    train = manifest["stages"]["train"]["outputs"]
    client = MlflowClient(train["tracking_uri"])
    metrics = client.get_run(train["run_id"]).data.metrics
    assert metrics["eval_tuned_nll"] == pytest.approx(manifest["stages"]["eval"]["outputs"]["tuned_nll"])
    assert {"eval_base_nll", "eval_base_stop_rate", "eval_tuned_stop_rate"} <= set(metrics)
    assert {a.path for a in client.list_artifacts(train["run_id"], "eval")} >= {"eval/report.md", "eval/metrics.json"}


def test_unchanged_inputs_skip_and_new_settings_rerun(evaluated):
    spec, run_dir, _, _, _ = evaluated
    printed = []
    execute(spec, run_dir, out=printed.append)
    assert "[eval] skipped: inputs unchanged since the last run (force=true redoes it)" in printed
    fewer = copy.deepcopy(spec)
    fewer["eval"].update(samples=3, rows=5)
    execute(fewer, run_dir, out=printed.append)
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert (metrics["rows"], metrics["samples"]) == (5, 3) and "[eval] skipped" not in printed[-1]
    execute(spec, run_dir, out=lambda *_: None)  # back as the other tests read it


def test_a_worse_or_non_stopping_model_is_said_plainly():
    m = {
        "base_nll": 2.0,
        "tuned_nll": 2.5,
        "base_stop_rate": 0.9,
        "tuned_stop_rate": 0.4,
        "samples": 10,
        "max_new_tokens": 128,
    }
    said = eval_report.warnings(m)
    assert len(said) == 2 and "worse than its base" in said[0] and "2.500 against 2.000" in said[0]
    assert "stops less often than its base: 40 % of its answers end within 128 tokens against 90 %" in said[1]
    assert eval_report.warnings({**m, "tuned_nll": 1.0, "tuned_stop_rate": 1.0}) == []


def test_the_judge_mechanics():
    """Both orders, a tie where they disagree, unreadable verdicts counted and left out, a bootstrap interval."""
    assert [judging.parse(r) for r in ("A", " b.", "**B**", "Answer A", "Neither", "", None, "Both")] == [
        "A",
        "B",
        "B",
        "A",
        None,
        None,
        None,
        None,
    ]
    assert judging.outcome("A", "B") == 1.0 and judging.outcome("B", "A") == 0.0
    assert judging.outcome("A", "A") == 0.5 and judging.outcome(None, "B") is None
    samples = [{"tuned": {"text": "x" * 10}, "base": {"text": "y" * 30}}] * 6
    verdicts = [("A", "B")] * 3 + [("A", "A"), ("B", "A"), (None, "B")]
    s = judging.summarize({"model": "m", "base_url": "http://127.0.0.1:1/v1"}, samples, verdicts)
    assert (s["judged"], s["wins"], s["ties"], s["losses"], s["unparsed"]) == (5, 3, 1, 1, 1)
    assert s["win_rate"] == pytest.approx(0.7) and s["win_rate_ci95"][0] <= 0.7 <= s["win_rate_ci95"][1]
    assert 0 <= s["win_rate_ci95"][0] < s["win_rate_ci95"][1] <= 1
    assert (s["tuned_mean_chars"], s["base_mean_chars"]) == (10, 30)
    assert judging.interval([1.0] * 8) == (1.0, 1.0)


def test_the_judge_against_a_real_local_endpoint(evaluated, tmp_path, monkeypatch):
    """This project's own endpoint as the judge: its verdicts are noise; what is tested is that each sample is sent
    in both orders, with the key from the named variable, and that every verdict is counted."""
    spec, run_dir, manifest, _, _ = evaluated
    server = Server(manifest["stages"]["train"]["outputs"]["mlflow_model_dir"], tmp_path / "judge")
    try:
        monkeypatch.setenv("JUDGE_KEY_FOR_TEST", server.key)
        judged = copy.deepcopy(spec)
        judged["eval"].update(
            samples=4,
            judge={"base_url": f"{server.base}/v1", "model": "mlflow_model", "api_key_env": "JUDGE_KEY_FOR_TEST"},
        )
        before = server.log.read_text().count("POST /v1/chat/completions")
        printed = []
        execute(judged, run_dir, out=printed.append)
        # 4 samples, both orders
        assert ep.count_lines(server.log, "POST /v1/chat/completions", before + 8) - before == 8
        metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
        j = metrics["judge"]
        assert (
            j["samples"] == 4
            and j["judged"] + j["unparsed"] >= 4
            and j["judged"] == j["wins"] + j["ties"] + j["losses"]
        )
        if j["judged"]:
            assert j["win_rate_ci95"][0] <= j["win_rate"] <= j["win_rate_ci95"][1]
        else:
            assert j["win_rate"] is None and j["win_rate_ci95"] == [None, None]
        samples = [json.loads(line) for line in (run_dir / "eval" / "answers.jsonl").read_text().splitlines()]
        assert all(set(s["judge"]) == {"tuned_as_A", "tuned_as_B"} for s in samples)
        assert "## Judge" in (run_dir / "eval" / "report.md").read_text() and any(
            "judge mlflow_model" in p for p in printed
        )
        for path in run_dir.rglob("*"):  # the key is read from the environment, written nowhere
            if path.is_file() and path.stat().st_size < 5_000_000:
                assert server.key.encode() not in path.read_bytes(), path
        # a judge named with an unset key variable is refused before any request
        monkeypatch.delenv("JUDGE_KEY_FOR_TEST")
        with pytest.raises(Exception, match=r"\$JUDGE_KEY_FOR_TEST is not set"):
            execute({**judged, "force": True}, run_dir, out=lambda *_: None)
    finally:
        server.stop()
        execute(spec, run_dir, out=lambda *_: None)
        os.environ.pop("JUDGE_KEY_FOR_TEST", None)
