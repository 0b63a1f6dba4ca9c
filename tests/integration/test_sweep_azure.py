"""A -m sweep on Azure ML, run in-process through Hydra and our launcher against the recording MLClient stand-in.

Every job is submitted before any is waited on; they are followed together; each point then registers its model;
a sweep interrupted while following its jobs picks the same jobs up again instead of submitting them twice.
"""

import json
import sys

import pytest
from hydra.core.global_hydra import GlobalHydra

from runner.azure import deploy as az_deploy
from runner.azure import register as az_register
from runner.azure import retry
from runner.azure import sweep as az_sweep
from runner.azure import train as az_train
from runner.hints import program
from runner.spec import azure_env

from ..support.azure_standin import AZURE, FakeML

pytestmark = pytest.mark.filterwarnings("ignore")

ENV = {var: AZURE[key] for key, var in azure_env().items()}
SWEEP = ["-m", "compute=a100", "model=phi35", "data.percent=25,50,100"]
LOSS = {"data.percent=25": 1.9, "data.percent=50": 1.7, "data.percent=100": 1.6}


def trainer_summary(job):
    """What the trainer writes to the job's outputs/summary.json (the stand-in's part: no training happens)."""
    point = job.tags["sweep_point"]
    return {
        "eval_loss_before": 2.3,
        "eval_loss": LOSS[point],
        "train_loss": 1.2,
        "train_runtime_s": 1800.0,
        "tokens_per_s": 5000.0,
        "steps": 30,
    }


def trainer_eval(job):
    """What the trainer's eval after training writes to the job's outputs/eval (trainer/evaluate.py's figures)."""
    from trainer import eval_report

    point = job.tags["sweep_point"]
    said = [{"text": "an answer", "tokens": 20, "stopped": True}] * 4
    rambling = [{"text": "and so on", "tokens": 128, "stopped": False}] * 4
    samples = [
        {
            "messages": [{"role": "user", "content": "q"}],
            "reference": "a",
            "reference_tokens": 25,
            "base": b,
            "tuned": t,
        }
        for b, t in zip(rambling, said)
    ]
    metrics = eval_report.figures(
        {"nll": 2.3, "tokens": 900, "answers": rambling},
        {"nll": LOSS[point] + 0.1, "tokens": 900, "answers": said},
        samples,
        20,
        {"rows": 200, "samples": 20, "max_new_tokens": 128},
        60.0,
    )
    return {
        "eval/metrics.json": json.dumps(metrics),
        "eval/report.md": eval_report.markdown(metrics, samples),
        "eval/answers.jsonl": "".join(json.dumps(s) + "\n" for s in samples),
    }


@pytest.fixture
def cloud(monkeypatch, tmp_path):
    fake = FakeML(lifecycle=("Queued", "Running", "Running"), job_summary=trainer_summary, job_outputs=trainer_eval)
    for module in (az_train, az_register, az_sweep, az_deploy):
        monkeypatch.setattr(module, "client", lambda spec: fake)
    monkeypatch.setattr(retry, "_sleep", lambda s: None)
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    return fake


def runner_main(monkeypatch, *args) -> int:
    """python -m runner *args, in this process (the stand-in replaces the MLClient)."""
    import runner.__main__ as entry

    monkeypatch.setattr(sys, "argv", ["runner", *args])
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as exit_:
        entry.main()
    GlobalHydra.instance().clear()
    return exit_.value.code


def manifests(tmp_path):
    return {
        p.parent.name: json.loads(p.read_text())
        for p in (tmp_path / "outputs/default/a100_phi35_sample").glob("*/manifest.json")
    }


def test_every_job_is_submitted_before_any_is_waited_on(cloud, monkeypatch, tmp_path, capsys):
    assert runner_main(monkeypatch, *SWEEP) == 0
    names = cloud.names()
    submits = [i for i, n in enumerate(names) if n == "jobs.create_or_update"]
    waits = [i for i, n in enumerate(names) if n in ("jobs.get", "jobs.stream")]
    assert len(submits) == 3 and max(submits) < min(waits)
    # followed together: the status reads of the three jobs interleave, then each point finishes and registers
    reads = [d["name"] for d in cloud.details("jobs.get")]
    assert len(set(reads[:3])) == 3
    assert names.count("models.create_or_update") == 3
    shown = {d["job"].display_name for d in cloud.details("jobs.create_or_update")}
    assert shown == {f"default-phi35 {p}" for p in LOSS}

    runs = manifests(tmp_path)
    assert set(runs) == set(LOSS)
    for point, m in runs.items():
        s = m["stages"]
        assert [s[k]["status"] for k in ("data", "train", "register")] == ["done"] * 3
        assert s["train"]["outputs"]["eval_loss"] == LOSS[point] and s["train"]["outputs"]["cost_usd"] == 1.83
        assert "deploy" not in s  # a sweep deploys once, afterwards
    assert len({m["stages"]["data"]["outputs"]["eval"]["sha256"] for m in runs.values()}) == 1

    out = capsys.readouterr().out
    assert "[sweep] following 3 Azure ML job(s) together" in out
    table = (tmp_path / "outputs/default/sweep.md").read_text()
    # the eval columns: the job evaluated base and fine-tuned models on the same eval rows
    assert (
        "| data.percent=100 | register done | 76 | 20 | 2.3 | 1.6 | 2.3 | 1.7 | 0 % | 100 % | 1800 | 5000 | 1.83 |"
        in table
    )
    assert f"Deploy it: {program()} -m compute=a100 model=phi35 data.percent=100 'stages=[deploy,chat]'" in table
    assert (tmp_path / "outputs/default/sweep.png").is_file()

    # the same command again: every point is finished, nothing is submitted
    before = names.count("jobs.create_or_update")
    assert runner_main(monkeypatch, *SWEEP) == 0
    assert cloud.names().count("jobs.create_or_update") == before


def test_a_sweep_stopped_while_following_its_jobs_follows_the_same_jobs_again(cloud, monkeypatch, tmp_path, capsys):
    cloud.failures["jobs.get"] = [KeyboardInterrupt()]  # Ctrl-C during the first status read
    assert runner_main(monkeypatch, *SWEEP) == 130
    assert "they keep running on Azure ML" in capsys.readouterr().err
    runs = manifests(tmp_path)
    assert {m["stages"]["train"]["status"] for m in runs.values()} == {"submitted"}
    submitted = {m["stages"]["train"]["outputs"]["job_name"] for m in runs.values()}

    assert runner_main(monkeypatch, *SWEEP) == 0
    assert cloud.names().count("jobs.create_or_update") == 3  # none submitted twice
    runs = manifests(tmp_path)
    assert {m["stages"]["train"]["outputs"]["job_name"] for m in runs.values()} == submitted
    assert {m["stages"]["register"]["status"] for m in runs.values()} == {"done"}


def test_a_failed_job_fails_its_point_only(cloud, monkeypatch, tmp_path, capsys):
    cloud.job_status = lambda job: "Failed" if job.tags["sweep_point"] == "data.percent=50" else "Completed"
    assert runner_main(monkeypatch, *SWEEP) == 1
    runs = manifests(tmp_path)
    status = {p: m["stages"]["train"]["status"] for p, m in runs.items()}
    assert status == {"data.percent=25": "done", "data.percent=50": "failed", "data.percent=100": "done"}
    assert {p for p, m in runs.items() if m["stages"].get("register", {}).get("status") == "done"} == {
        "data.percent=25",
        "data.percent=100",
    }
    assert capsys.readouterr().err.count("CUDA out of memory") == 1  # said once
    text = (tmp_path / "outputs/default/sweep.md").read_text()
    assert "| data.percent=50 | train failed |" in text
    assert f"Deploy it: {program()} -m compute=a100 model=phi35 data.percent=100 'stages=[deploy,chat]'" in text

    # the same command again: the failed point alone gets a new job (the finished ones are skipped)
    cloud.job_status = "Completed"
    submitted = cloud.names().count("jobs.create_or_update")
    assert runner_main(monkeypatch, *SWEEP) == 0
    assert cloud.names().count("jobs.create_or_update") == submitted + 1
    assert {m["stages"]["register"]["status"] for m in manifests(tmp_path).values()} == {"done"}


def test_losing_azure_while_following_stops_the_sweep_with_a_clear_error_and_the_jobs_are_followed_again(
    cloud, monkeypatch, tmp_path, capsys
):
    from azure.core.exceptions import ServiceRequestError

    cloud.failures["jobs.get"] = [ServiceRequestError("connection reset")] * 20  # more than the retries take
    assert runner_main(monkeypatch, *SWEEP) == 1
    err = capsys.readouterr().err
    assert "error: lost track of the sweep's Azure ML jobs" in err and "Traceback" not in err
    assert "Re-run the same command to follow them again" in err
    assert (tmp_path / "outputs/default/sweep.md").is_file()  # the summary says where each point stands
    cloud.failures["jobs.get"] = []
    assert runner_main(monkeypatch, *SWEEP) == 0
    assert cloud.names().count("jobs.create_or_update") == 3


def test_deploying_the_best_point_keeps_the_whole_sweeps_summary(cloud, monkeypatch, tmp_path):
    assert runner_main(monkeypatch, *SWEEP) == 0
    table = (tmp_path / "outputs/default/sweep.md").read_text()
    # the summary's deploy command is a one-point sweep: it must not rewrite the summary as a one-row table
    assert runner_main(monkeypatch, "-m", "compute=a100", "model=phi35", "data.percent=100", "stages=[deploy]") == 0
    assert "online_deployments.begin_create_or_update" in cloud.names()
    assert (tmp_path / "outputs/default/sweep.md").read_text() == table
    # redoing one point (its register stage) summarises the whole sweep again
    assert (
        runner_main(
            monkeypatch, "-m", "compute=a100", "model=phi35", "data.percent=50", "stages=[register]", "force=true"
        )
        == 0
    )
    text = (tmp_path / "outputs/default/sweep.md").read_text()
    assert all(f"| data.percent={p} | " in text for p in (25, 50, 100))


def test_the_plan_says_how_the_points_run_and_what_they_cost_at_most(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["-m", "compute=a100", "model=phi35", "data=1pct", "data.percent=1,2,5", "plan=true"]
    assert runner_main(monkeypatch, *args) == 0
    out = capsys.readouterr().out
    assert (
        "3 Azure ML job(s) on cluster gpu-a100-cluster: all submitted at once, then followed together; the cluster "
        "runs 1 at a time (compute.max_instances=1, 1 node(s) per job), the other 2 queue on it"
    ) in out
    assert "wall time at most 3 x 6 h" in out and "compute.max_instances=3 runs all at once" in out
    assert "costs at most 18 node-hours + 0.25 idle = about $66.98" in out
    assert "every point is evaluated on the same eval rows (data.eval=fixed)" in out
    assert runner_main(monkeypatch, *args, "compute.max_instances=3", "compute.max_hours=2") == 0
    out = capsys.readouterr().out
    assert "the cluster runs 3 at a time" in out and "wall time at most 1 x 2 h" in out
    assert "costs at most 6 node-hours + 0.75 idle = about $24.77" in out
    assert (tmp_path / "outputs/default/sweep-plan.txt").is_file()
    assert not list(tmp_path.glob("outputs/default/*/*/manifest.json"))  # plan mode runs nothing
