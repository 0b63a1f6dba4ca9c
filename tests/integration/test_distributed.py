"""More than one process on this CPU: the Azure job's own command line under torchrun with 2 processes (gloo).

DDP against one process with the same global batch; FSDP2 (accelerate's own path, trainer/distributed.py lets it
run on the CPU) saving one gathered model that the scorer loads and that answers; a SIGKILLed sharded run resumed
to the end; `compute=local compute.processes_per_instance=2` launching torchrun itself. Every run records which
files each rank wrote (tests/support/rank_writes.py): rank 1 writes only its checkpoint shards and the tiny model's cache.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from runner.app import execute, write_spec
from runner.context import Context
from runner.manifest import Manifest
from runner.registry import implementation
from runner.spec import azure_env_paths

from ..conftest import compose_once
from ..support._endpoint import single_turn_pairs
from ..support.helpers import runner_cli

pytestmark = pytest.mark.slow
WRAPPER = Path(__file__).parent.parent / "support" / "rank_writes.py"


def planned(root: Path, *overrides):
    """compute=cpu_e16s on the tiny model (the Azure job's spec): the data stage run, the train stage planned."""
    spec = compose_once(root / "outputs", "compute=cpu_e16s", "model=tiny", "plan=true", *overrides)
    run_dir = root / "run"
    run_dir.mkdir(parents=True)
    write_spec(spec, run_dir, azure_env_paths())
    manifest = execute({**spec, "plan": False, "stages": ["data"]}, run_dir, out=lambda *_: None)
    implementation("train", spec).plan(spec, Context(run_dir, Manifest(run_dir)))
    return run_dir, manifest


def job_argv(run_dir: Path, outputs: Path) -> list[str]:
    """job.yml's command with ${{inputs.*}} and ${{outputs.*}} filled as Azure fills them (mounted paths)."""
    azure = run_dir / "azure"
    job = yaml.safe_load((azure / "job.yml").read_text())
    command = job["command"]
    for name, value in job["inputs"].items():
        command = command.replace("${{inputs.%s}}" % name, str((azure / value["path"]).resolve()))
    for name in job["outputs"]:
        (outputs / name).mkdir(parents=True, exist_ok=True)
        command = command.replace("${{outputs.%s}}" % name, str(outputs / name))
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "trainer"]
    return argv[3:]


def run_job(
    run_dir: Path, root: Path, processes: int, kill_when=None, kill_ranks=True
) -> tuple[subprocess.CompletedProcess, Path]:
    """The job's command in its code folder: `python -m trainer ...` alone, or under torchrun with processes ranks.

    kill_when(outputs) -> True: SIGKILL torchrun (and its ranks, unless kill_ranks=False) at that moment.
    """
    outputs = root / "job-outputs"
    writes = root / "writes"
    writes.mkdir(parents=True, exist_ok=True)
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        if processes > 1
        else [sys.executable]
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(run_dir / "azure" / "job-code"),
        "RANK_WRITES_DIR": str(writes),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.Popen(
        [*launcher, str(WRAPPER), *job_argv(run_dir, outputs)],
        cwd=run_dir / "azure" / "job-code",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    if kill_when is None:
        out, _ = proc.communicate(timeout=600)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out), outputs
    deadline = time.monotonic() + 300
    while not kill_when(outputs) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    # as a node that dies: torchrun and its ranks at once (torchrun starts each rank in a session of its own)
    import psutil

    for p in [psutil.Process(proc.pid), *(psutil.Process(proc.pid).children(recursive=True) if kill_ranks else [])]:
        p.kill()
    out, _ = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out), outputs


def summary_of(outputs: Path) -> dict:
    return json.loads((outputs / "model_output" / "summary.json").read_text())


def runs_in(root: Path, experiment="finetune-phi") -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def rank_one_wrote(root: Path, outputs: Path) -> list[str]:
    """What rank 1 wrote under the job's outputs or the tracking store, but its checkpoint shards and the tiny model
    cache every rank reads (built once; a rank that loses the race uses the winner's folder)."""
    wrote = json.loads((root / "writes" / "rank-1.json").read_text())
    ours = (str(outputs), str(root / "mlflow.db"), str(root / "mlartifacts"))
    allowed = (str(outputs / "checkpoints"), str(outputs / "model_output" / "cache"))
    return [p for p in wrote if p.startswith(ours) and not p.startswith(allowed)]


def check_one_model_from_rank_zero(root: Path, outputs: Path, processes: int):
    model_dir = outputs / "model_output" / "mlflow_model"
    assert (model_dir / "MLmodel").is_file() and (model_dir / "model" / "model.safetensors").is_file()
    assert not list((outputs / "model_output").glob("mlflow_model.partial*")), "one model, written once"
    runs = runs_in(root)
    assert len(runs) == 1 and runs[0].data.metrics["final_eval_loss"] == summary_of(outputs)["eval_loss"]
    assert not rank_one_wrote(root, outputs), rank_one_wrote(root, outputs)
    rank0 = json.loads((root / "writes" / "rank-0.json").read_text())
    assert str(root / "mlflow.db") in rank0 and any(p.startswith(str(model_dir)) for p in rank0)
    assert summary_of(outputs)["processes"] == processes
    return model_dir


def answers(model_dir: Path, manifest: dict, n: int = 2) -> tuple[list, list]:
    from serving import scoring

    scorer = scoring.Scorer(model_dir)
    pairs = single_turn_pairs(manifest, n)
    return [scoring.score_body(scorer, {"input_data": [q], "params": {"max_new_tokens": 96}})[0] for q, _ in pairs], [
        a for _, a in pairs
    ]


def test_ddp_with_two_processes_matches_one_process_with_the_same_global_batch(tmp_path):
    # the default recipe's 300 steps: after 100 the two trajectories still differ (4.63 vs 5.13 here), by 300 they
    # have met (4.56 vs 4.38)
    one, manifest = planned(tmp_path / "one")
    two, _ = planned(tmp_path / "two", "train.per_device_train_batch_size=4")
    r1, out1 = run_job(one, tmp_path / "one", 1)
    assert r1.returncode == 0, r1.stdout[-3000:]
    r2, out2 = run_job(two, tmp_path / "two", 2)
    assert r2.returncode == 0, r2.stdout[-3000:]
    s1, s2 = summary_of(out1), summary_of(out2)
    assert "2 processes (gloo on the CPU): DDP (train.fsdp=auto, no GPU memory to compare with)" in r2.stdout
    assert (s2["processes"], s2["sharding"], s1["processes"], s1["sharding"]) == (2, "ddp", 1, None)
    assert s1["steps"] == s2["steps"] == 300  # 76 rows, global batch 8 both ways: 10 steps an epoch
    # the same base model; two ranks evaluate half the rows each and average per-batch means (6.4036 vs 6.4061)
    assert s1["eval_loss_before"] == pytest.approx(s2["eval_loss_before"], abs=0.01)
    assert s2["eval_loss"] < s2["eval_loss_before"] - 1
    assert abs(s1["eval_loss"] - s2["eval_loss"]) < 0.06 * s1["eval_loss"], (s1["eval_loss"], s2["eval_loss"])
    assert r2.stdout.count("[train] eval loss before training") == 1  # rank 0 alone logs
    model_dir = check_one_model_from_rank_zero(tmp_path / "two", out2, 2)
    got, expected = answers(model_dir, manifest)
    assert got == expected  # the training answers, as one process's model gives them
    print(f"eval loss: 1 process {s1['eval_loss']:.4f}, 2 processes (DDP) {s2['eval_loss']:.4f}")


def test_fsdp2_with_two_processes_saves_one_gathered_model_that_answers(tmp_path):
    run_dir, manifest = planned(
        tmp_path, "train.fsdp=true", "train.per_device_train_batch_size=4", "train.activation_checkpointing=true"
    )
    r, outputs = run_job(run_dir, tmp_path, 2)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "FSDP2 (train.fsdp=true): weights, gradients and optimizer state sharded over 2 processes" in r.stdout
    s = summary_of(outputs)
    assert s["sharding"] == "fsdp2" and s["steps"] == 300 and s["eval_loss"] < s["eval_loss_before"] - 1
    # the checkpoints were sharded: torch.distributed.checkpoint files, one per rank; deleted once the model is saved
    wrote = json.loads((tmp_path / "writes" / "rank-1.json").read_text())
    assert any("pytorch_model_fsdp_0" in p and p.endswith(".distcp") for p in wrote)
    assert not any((outputs / "checkpoints").iterdir())
    model_dir = check_one_model_from_rank_zero(tmp_path, outputs, 2)
    got, expected = answers(model_dir, manifest)
    assert got == expected  # the gathered weights reproduce the training answers, as one process's do


def test_a_sigkilled_two_process_run_resumes_from_its_sharded_checkpoint(tmp_path):
    run_dir, _ = planned(
        tmp_path,
        "train.fsdp=true",
        "train.num_train_epochs=10",
        "train.save_steps=20",
        "train.per_device_train_batch_size=4",
    )

    def second_checkpoint(outputs):
        return (outputs / "checkpoints" / "checkpoint-40" / "trainer_state.json").is_file()

    r, outputs = run_job(run_dir, tmp_path, 2, kill_when=second_checkpoint, kill_ranks=False)
    assert r.returncode == -signal.SIGKILL and second_checkpoint(outputs), r.stdout[-3000:]
    time.sleep(2)  # the ranks end with torchrun (trainer.distributed.die_with_launcher), not at their last step
    lines = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]) if p.pid != os.getpid()]
    assert not any("trainer" in line and str(outputs) in line for line in lines), "ranks left training"
    assert not (outputs / "model_output" / "mlflow_model").exists()
    r, outputs = run_job(run_dir, tmp_path, 2)
    assert r.returncode == 0, r.stdout[-3000:]
    resumed = [line for line in r.stdout.splitlines() if "[train] resuming from" in line]
    assert resumed and "checkpoint-" in resumed[0] and int(resumed[0].rsplit("-", 1)[1]) >= 40
    s = summary_of(outputs)
    assert s["steps"] == 100 and s["sharding"] == "fsdp2" and s["eval_loss_before"] is not None
    assert len(runs_in(tmp_path)) == 1  # the resumed run continued the first attempt's MLflow run
    assert (outputs / "model_output" / "mlflow_model" / "MLmodel").is_file()


def test_compute_local_with_two_processes_launches_torchrun_itself(tmp_path):
    r = runner_cli(
        "compute.processes_per_instance=2",
        "stages=[data,train]",
        "train.num_train_epochs=3",
        cwd=tmp_path,
        timeout=600,
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (
        "[train] 2 processes on this machine, on the CPU (gloo): torchrun --standalone --nproc_per_node=2" in r.stdout
    )
    run_dir = tmp_path / "outputs" / "default" / "local_tiny_sample"
    train = json.loads((run_dir / "manifest.json").read_text())["stages"]["train"]
    assert train["status"] == "done" and train["outputs"]["processes"] == 2 and train["outputs"]["sharding"] == "ddp"
    assert train["outputs"]["steps"] == 15  # 76 rows at 2 x 8 a step: 5 steps an epoch
    assert (Path(train["outputs"]["mlflow_model_dir"]) / "MLmodel").is_file()
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("finetune-phi").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == "default/local_tiny_sample"
    assert runs[0].data.tags["runner.run_dir"] == str(run_dir.resolve()) and train["outputs"]["model_uri"]
