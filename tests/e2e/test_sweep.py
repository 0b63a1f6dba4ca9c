"""Local -m sweeps on the shipped sample, through the CLI as a user runs them: real training, MLflow's SQLite store,
the summary's files; a sweep killed mid-training resumes; sweep.deploy=best serves the best point."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from runner import REPO_ROOT
from runner.hints import program

from ..support.helpers import runner_cli

pytestmark = pytest.mark.slow
POINTS = ("25", "50", "100")


def point_dir(tmp_path, pct):
    return tmp_path / "outputs/default/local_tiny_sample" / f"data.percent={pct}"


def manifest(tmp_path, pct):
    return json.loads((point_dir(tmp_path, pct) / "manifest.json").read_text())["stages"]


def mlflow_runs(tmp_path):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    return client, client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_a_fraction_sweep_evaluates_every_point_on_the_same_rows_and_summarises(tmp_path):
    r = runner_cli("-m", "data.percent=25,50,100", "stages=[data,train,eval]", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = {p: manifest(tmp_path, p) for p in POINTS}
    assert len({m["data"]["outputs"]["eval"]["sha256"] for m in runs.values()}) == 1
    assert len({m["data"]["outputs"]["sha256"]["test.jsonl"] for m in runs.values()}) == 1
    rows = [runs[p]["data"]["outputs"]["train_rows"] for p in POINTS]
    assert rows == sorted(rows) and rows[0] < rows[-1]
    before = {round(m["train"]["outputs"]["eval_loss_before"], 4) for m in runs.values()}
    assert len(before) == 1  # one base model for every point: its tokenizer comes from the rows any point can take
    after = {p: runs[p]["train"]["outputs"]["eval_loss"] for p in POINTS}
    assert after["100"] < after["25"]

    root = tmp_path / "outputs/default"
    table = (root / "sweep.md").read_text()
    for p in POINTS:
        assert f"| data.percent={p} | eval done | {runs[p]['data']['outputs']['train_rows']} |" in table
        e = runs[p]["eval"]["outputs"]  # does more data make a better model? the eval columns, one eval set
        assert (
            f"| {e['base_nll']:.4g} | {e['tuned_nll']:.4g} | {100 * e['base_stop_rate']:.0f} % | "
            f"{100 * e['tuned_stop_rate']:.0f} % |" in table
        )
    assert len({round(runs[p]["eval"]["outputs"]["base_nll"], 6) for p in POINTS}) == 1  # one base, same rows
    assert "| data.percent=25 | eval done |" in r.stdout  # printed too
    assert (root / "sweep.csv").read_text().splitlines()[0].startswith("point,status,train rows,eval rows")
    assert (root / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = min(after, key=after.get)
    assert f"Deploy it: {program(tmp_path)} -m data.percent={best} 'stages=[register,deploy,chat]'" in table

    # MLflow: one parent run for the sweep, a child per point named after its run directory
    client, found = mlflow_runs(tmp_path)
    parents = [x for x in found if "runner.sweep_dir" in x.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].info.run_name == "default sweep: data.percent=25,50,100 stages=[data,train,eval]"
    children = {x.info.run_name: x for x in found if x.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert set(children) == {f"default/local_tiny_sample/data.percent={p}" for p in POINTS}
    for p in POINTS:
        assert children[f"default/local_tiny_sample/data.percent={p}"].data.tags["runner.run_dir"] == str(
            point_dir(tmp_path, p).resolve()
        )
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id)} >= {"sweep.md", "sweep.csv", "sweep.png"}

    again = runner_cli("-m", "data.percent=25,50,100", "stages=[data,train,eval]", cwd=tmp_path, timeout=600)
    assert again.returncode == 0 and again.stdout.count("skipped: inputs unchanged") == 9
    assert len(mlflow_runs(tmp_path)[1]) == len(found)


def test_a_killed_sweep_resumes_where_it_stopped(tmp_path):
    args = ["-m", "data.percent=50,100", "stages=[data,train]"]  # the quick recipe saves every 100 of 300 steps
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoints = point_dir(tmp_path, 100) / "train"
    deadline = time.time() + 300
    while not list(checkpoints.glob("*/checkpoints/checkpoint-*/trainer_state.json")) and time.time() < deadline:
        assert proc.poll() is None, "the sweep ended before the second point saved a checkpoint"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # as a lost machine or `kill -9` would
    proc.wait()
    assert manifest(tmp_path, 50)["train"]["status"] == "done"
    assert manifest(tmp_path, 100)["train"]["status"] == "running"

    r = runner_cli(*args, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    first, second = r.stdout.split("[sweep] point data.percent=100")
    assert first.count("skipped: inputs unchanged") == 2  # the finished point
    assert "[train] resuming from" in second and "checkpoint-" in second
    assert manifest(tmp_path, 100)["train"]["status"] == "done"
    # measured once, by the killed attempt, and still reported
    assert manifest(tmp_path, 100)["train"]["outputs"]["eval_loss_before"] == pytest.approx(
        manifest(tmp_path, 50)["train"]["outputs"]["eval_loss_before"]
    )


def test_a_sweep_deploys_only_its_best_point_when_asked(tmp_path):
    args = ["-m", "data.percent=50,100"]
    r = runner_cli(*args, "stages=[data,train,register]", "sweep.deploy=best", cwd=tmp_path, timeout=600)
    losses = {p: manifest(tmp_path, p)["train"]["outputs"]["eval_loss"] for p in ("50", "100")}
    best, other = sorted(losses, key=losses.get)
    try:
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"[sweep] deploying the best point, data.percent={best}" in r.stdout
        assert manifest(tmp_path, best)["deploy"]["status"] == "done" and "[chat]" in r.stdout
        assert "deploy" not in manifest(tmp_path, other) and manifest(tmp_path, other)["register"]["status"] == "done"
        table = (tmp_path / "outputs/default/sweep.md").read_text()
    finally:
        down = runner_cli("-m", f"data.percent={best}", "stages=[teardown]", cwd=tmp_path)
    assert down.returncode == 0, down.stderr[-2000:]
    assert manifest(tmp_path, best)["deploy"]["status"] == "stopped"
    assert (tmp_path / "outputs/default/sweep.md").read_text() == table  # the summary's teardown command keeps it
