"""The sweep summary compares eval losses only when they were measured on the same eval rows.

Each point's manifest is written as its stages write it (runner/manifest.py); summarize reads them back.
"""

from runner import sweep
from runner.hints import program
from runner.manifest import Manifest
from runner.sweep import summary as sweep_summary


def point(root, name, eval_sha, trained_on=None, loss=2.0, rows=10, train_status="done"):
    run_dir = root / name
    m = Manifest(run_dir)
    m.record(
        "data",
        "done",
        "h",
        {
            "train_rows": rows,
            "test_rows": 5,
            "eval": {"mode": "fixed", "sha256": eval_sha},
            "sha256": {"test.jsonl": eval_sha},
        },
    )
    m.record(
        "train",
        train_status,
        "h",
        {
            "eval_loss": loss,
            "eval_loss_before": 3.0,
            "train_runtime_s": 12.0,
            "tokens_per_s": 900.0,
            "eval_sha256": trained_on or eval_sha,
        },
    )
    return {"name": name, "overrides": [name], "run_dir": run_dir}


def test_points_evaluated_on_different_rows_are_not_compared(tmp_path):
    points = [point(tmp_path, "data.percent=25", "a" * 64, loss=1.5), point(tmp_path, "data.percent=50", "b" * 64)]
    out = []
    result = sweep_summary.summarize(tmp_path, points, out=out.append)
    assert result["best"] is None and not result["comparable"]
    text = (tmp_path / "sweep.md").read_text()
    assert "Not compared: the points were evaluated on 2 different eval sets" in text and "Deploy it" not in text
    assert not (tmp_path / "sweep.png").exists() and "Not compared" in out[0]


def test_a_loss_measured_before_the_points_data_changed_is_left_out(tmp_path):
    points = [
        point(tmp_path, "data.percent=25", "a" * 64, loss=2.0, rows=10),
        point(tmp_path, "data.percent=50", "a" * 64, trained_on="c" * 64, loss=0.5, rows=20),  # old eval rows
        point(tmp_path, "data.percent=100", "a" * 64, loss=1.0, rows=40, train_status="failed"),
    ]
    result = sweep_summary.summarize(tmp_path, points, out=lambda _: None)
    assert result["comparable"] and result["best"]["point"] == "data.percent=25"
    text = (tmp_path / "sweep.md").read_text()
    assert "| data.percent=50 | train out of date (its data changed) | 20 | 5 |  |  |" in text
    assert "| data.percent=100 | train failed | 40 | 5 |  |  |" in text
    assert f"Deploy it: {program()} -m data.percent=25 'stages=[register,deploy,chat]'" in text
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_azure_values_stay_out_of_names_and_commands():
    points = [
        {"overrides": ["azure.subscription_id=0000-1111", "data.percent=25"]},
        {"overrides": ["azure.subscription_id=0000-1111", "data.percent=50"]},
    ]
    assert sweep.varying(points) == [["data.percent=25"], ["data.percent=50"]]
    assert "0000" not in sweep.point_command(points[0]["overrides"], "deploy,chat")
