"""The training job as Azure ML runs it: job.yml's own command line, in a virtualenv built from the generated
conda-train.yml (CPU torch: the GPU variant differs only in the torch build), logging to a stand-in of Azure ML's
tracking server: MLflow's own server behind a proxy that answers MLflow 3's logged-model routes with 404, as
Azure's does (Azure/azure-sdk-for-python#44896). register and deploy then find the model where model.yml points.
"""

import json
import os
import shlex
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from runner.app import execute, write_spec
from runner.azure import resources
from runner.context import Context
from runner.manifest import Manifest
from runner.registry import implementation
from runner.spec import azure_env_paths

from ..conftest import compose_once
from ..support import azure_envs
from ..support._endpoint import single_turn_pairs
from ..support.helpers import free_port

pytestmark = pytest.mark.slow


class TrackingStandIn:
    """MLflow's REST API as Azure ML's tracking server offers it: logged-model routes 404; `fail` paths 400."""

    def __init__(self, root: Path):
        self.backend = free_port()
        self.requests, self.fail = [], ()
        mlflow = Path(sys.executable).with_name("mlflow")
        self.log = root / "mlflow-server.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    str(mlflow),
                    "server",
                    "--backend-store-uri",
                    f"sqlite:///{root / 'mlflow.db'}",
                    "--artifacts-destination",
                    str(root / "artifacts"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.backend),
                    "--workers",
                    "1",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.proxy = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.proxy.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.proxy.server_address[1]}"
        deadline = time.monotonic() + 90
        while not self._up():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow server did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)

    def _up(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.backend}/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def _handler(self):
        stand_in = self

        class Proxy(BaseHTTPRequestHandler):
            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stand_in.requests.append((self.command, self.path))
                if "/logged-models" in self.path or any(f in self.path for f in stand_in.fail):
                    status = 404 if "/logged-models" in self.path else 400
                    return self._reply(
                        status,
                        {
                            "error_code": "ENDPOINT_NOT_FOUND" if status == 404 else "BAD_REQUEST",
                            "message": f"{self.path} is not supported",
                        },
                    )
                req = urllib.request.Request(
                    f"http://127.0.0.1:{stand_in.backend}{self.path}",
                    data=body or None,
                    method=self.command,
                    headers={k: v for k, v in self.headers.items() if k.lower() != "host"},
                )
                try:
                    with urllib.request.urlopen(req, timeout=120) as resp:
                        self._reply(resp.status, resp.read(), resp.headers.get("Content-Type"))
                except urllib.error.HTTPError as err:
                    self._reply(err.code, err.read(), err.headers.get("Content-Type"))

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

            def _reply(self, status, payload, content_type="application/json"):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type or "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        return Proxy

    def stop(self):
        self.proxy.shutdown()
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    server = TrackingStandIn(tmp_path_factory.mktemp("azureml-tracking"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """compute=cpu_e16s on the tiny model with the phi3 default's optimizer: the data stage done here, the train
    stage's files planned."""
    root = tmp_path_factory.mktemp("azure-job")
    # the optimizer of model=phi3|phi35's default recipe (torchao's 8-bit AdamW) runs in the job's environment
    spec = compose_once(
        root / "outputs",
        "compute=cpu_e16s",
        "model=tiny",
        "plan=true",
        "+train.optim=adamw_torch_8bit",
        "+train.optim_args='bf16_stochastic_round=True'",
    )
    run_dir = root / "run"
    run_dir.mkdir()
    write_spec(spec, run_dir, azure_env_paths())
    execute({**spec, "plan": False, "stages": ["data"]}, run_dir, out=lambda *_: None)
    ctx = Context(run_dir, Manifest(run_dir))
    implementation("train", spec).plan(spec, ctx)
    implementation("register", spec).plan(spec, ctx)
    azure = run_dir / "azure"
    conda = yaml.safe_load((azure / "conda-train.yml").read_text())
    python = azure_envs.build("job", conda["dependencies"][-1]["pip"])
    return spec, run_dir, azure, python


def run_job(job, tracking, tmp_path, env=None):
    """job.yml's command with its ${{inputs.*}} and ${{outputs.*}} as Azure fills them: mounted paths."""
    spec, run_dir, azure, python = job
    j = yaml.safe_load((azure / "job.yml").read_text())
    outputs = {name: tmp_path / "outputs" / name for name in j["outputs"]}
    for folder in outputs.values():
        folder.mkdir(parents=True)
    command = j["command"]
    for name, value in j["inputs"].items():
        command = command.replace("${{inputs.%s}}" % name, str((azure / value["path"]).resolve()))
    for name, folder in outputs.items():
        command = command.replace("${{outputs.%s}}" % name, str(folder))
    argv = shlex.split(command)
    assert argv[0] == "python"
    from mlflow import MlflowClient

    client = MlflowClient(tracking.url)  # Azure creates the job's run and hands its id to the job
    experiment = client.get_experiment_by_name(j["experiment_name"])
    exp_id = experiment.experiment_id if experiment else client.create_experiment(j["experiment_name"])
    run_id = client.create_run(exp_id).info.run_id
    job_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHON"))}
    job_env.update(
        {
            "MLFLOW_TRACKING_URI": tracking.url,
            "MLFLOW_RUN_ID": run_id,
            "HF_HUB_OFFLINE": "1",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            **(env or {}),
        }
    )
    r = subprocess.run(
        [str(python), *argv[1:]], cwd=azure / j["code"], env=job_env, capture_output=True, text=True, timeout=900
    )
    return r, outputs, run_id, client


def test_the_job_saves_the_model_where_model_yml_points_and_logs_to_the_workspace(job, tracking, tmp_path):
    spec, run_dir, azure, _ = job
    tracking.requests.clear()
    r, outputs, run_id, client = run_job(job, tracking, tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    model_yml = yaml.safe_load((azure / "model.yml").read_text())
    # azureml://jobs/<job>/outputs/model_output/paths/mlflow_model: the same folder in the mounted output
    registered = model_yml["path"].split("/outputs/", 1)[1].split("/paths/", 1)
    model_dir = outputs[registered[0]] / registered[1]
    assert (model_dir / "MLmodel").is_file() and (model_dir / "model" / "model.safetensors").is_file()
    assert not any(outputs[resources.CHECKPOINT_OUTPUT].iterdir()), "finished: no checkpoints left to pay for"
    assert not (outputs[resources.MODEL_OUTPUT] / "checkpoints").exists()
    assert not [p for m, p in tracking.requests if "/logged-models" in p], "the job asked for logged models"
    run = client.get_run(run_id)
    assert run.data.params["train.learning_rate"] == str(spec["train"]["learning_rate"])
    assert run.data.params["train.optim"] == "adamw_torch_8bit"
    assert {"loss", "eval_loss_before", "final_eval_loss"} <= set(run.data.metrics)
    assert {a.path for a in client.list_artifacts(run_id)} >= {"spec.yaml", "loss.png"}

    # register and deploy take that folder as it is: the scoring module answers from it
    from serving import scoring

    question, answer = single_turn_pairs(json.loads((run_dir / "manifest.json").read_text()), 1)[0]
    scorer = scoring.Scorer(model_dir)
    assert scoring.score_body(scorer, {"input_data": [question], "params": {"max_new_tokens": 96}}) == [answer]


def test_a_tracking_server_that_fails_mid_run_costs_no_training(job, tracking, tmp_path):
    """Metrics and artifacts refused: warnings, and the model is still saved."""
    tracking.fail = ("/runs/log-batch", "/runs/log-metric", "/mlflow-artifacts/")
    try:
        r, outputs, _, _ = run_job(job, tracking, tmp_path)
    finally:
        tracking.fail = ()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "warning: could not log" in r.stdout
    assert (outputs[resources.MODEL_OUTPUT] / "mlflow_model" / "MLmodel").is_file()


def test_the_job_environment_pairs_mlflow_and_azureml_mlflow(job):
    """The call that raised TypeError with azureml-mlflow 1.60 and mlflow 3.17 binds in the pinned pair."""
    probe = (
        "import inspect, mlflow; from azureml.mlflow.entry_point_loaders import azureml_artifacts_builder as b; "
        "inspect.signature(b).bind('azureml://x', tracking_uri='azureml://t', registry_uri='azureml://r'); "
        "print(mlflow.__version__)"
    )
    r = subprocess.run(
        [str(job[3]), "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert r.returncode == 0 and r.stdout.strip() == "3.15.0", r.stderr[-2000:]


def test_the_job_evaluates_after_training_and_the_eval_stage_takes_its_figures(job, tracking, tmp_path, monkeypatch):
    """The job's command line compares the model with its base on its node (outputs/eval, logged to the workspace's
    run); the Azure train stage downloads the job's outputs as Azure serves them and the eval stage reads them."""
    import shutil

    from runner.azure import retry
    from runner.azure import train as az_train

    from ..support.azure_standin import FakeML

    spec, run_dir, azure, _ = job
    r, _, run_id, client = run_job(job, tracking, tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    written = azure / resources.JOB_CODE / "outputs"  # the job's cwd is its code folder; Azure uploads its outputs/
    metrics = json.loads((written / "eval" / "metrics.json").read_text())
    assert metrics["tuned_nll"] < metrics["base_nll"] and metrics["samples"] == 20
    assert metrics["tuned_stop_rate"] > metrics["base_stop_rate"]
    assert "[eval] 20 held-out chats" in r.stdout  # in the job's log, as in the terminal
    assert f"base {metrics['base_nll']:.3f} -> fine-tuned {metrics['tuned_nll']:.3f}" in r.stdout
    logged = client.get_run(run_id).data.metrics
    assert logged["eval_tuned_nll"] == pytest.approx(metrics["tuned_nll"])
    assert {(a.path, a.is_dir) for a in client.list_artifacts(run_id)} >= {("eval", True)}  # report.md and the rest
    kept = tmp_path / "job-outputs"
    shutil.copytree(written, kept)

    fake = FakeML(job_outputs=kept)
    monkeypatch.setattr(az_train, "client", lambda spec: fake)
    monkeypatch.setattr(retry, "_sleep", lambda s: None)
    printed = []
    manifest = execute({**spec, "plan": False, "stages": ["train", "eval"]}, run_dir, out=printed.append)
    out = manifest["stages"]["eval"]["outputs"]
    assert manifest["stages"]["eval"]["status"] == "done" and out["tuned_nll"] == metrics["tuned_nll"]
    assert (run_dir / "eval" / "report.md").read_text() == (kept / "eval" / "report.md").read_text()
    assert any(p.startswith("[eval] figures of job ") for p in printed)
    assert any(f"fine-tuned {metrics['tuned_nll']:.3f}" in p for p in printed)
    # other eval settings than the job's: said, with the command that evaluates anew
    changed = {**spec, "plan": False, "stages": ["eval"], "eval": {**spec["eval"], "max_new_tokens": 7}}
    from runner.errors import UserError

    with pytest.raises(UserError, match="evaluated with other eval settings \\(eval.max_new_tokens\\)"):
        execute(changed, run_dir, out=lambda *_: None)
