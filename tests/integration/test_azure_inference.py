"""The deployment as Azure ML runs it: the staged code folder under Azure's own inference server (azmlinfsrv),
in a virtualenv built from the generated conda-inference.yml, with the model laid out as Azure mounts it.
"""

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from runner.app import write_spec
from runner.context import Context
from runner.manifest import Manifest
from runner.registry import implementation
from runner.spec import azure_env_paths

from ..conftest import compose_once
from ..support import azure_envs
from ..support._endpoint import post, single_turn_pairs, training_rows
from ..support.helpers import first_turn, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """<run_dir>/azure of compute=a100 as the deploy stage leaves it: code/, conda-inference.yml, deployment.yml."""
    root = tmp_path_factory.mktemp("azure-inference")
    spec = compose_once(root / "outputs", "compute=a100", "plan=true")
    run_dir = root / "run"
    run_dir.mkdir()
    write_spec(spec, run_dir, azure_env_paths())
    implementation("deploy", spec).plan(spec, Context(run_dir, Manifest(run_dir)))
    return run_dir / "azure"


@pytest.fixture(scope="module", params=["tiny", "tiny_phi4mini"])
def trained(request):
    """The session's fine-tune of model=tiny, then of model=tiny_phi4mini: each runs the tests below."""
    return request.getfixturevalue("trained_run" if request.param == "tiny" else "trained_phi4mini")


@pytest.fixture(scope="module")
def server(staged, trained, tmp_path_factory):
    conda = yaml.safe_load((staged / "conda-inference.yml").read_text())
    python = azure_envs.build("inference", conda["dependencies"][-1]["pip"])
    deployment = yaml.safe_load((staged / "deployment.yml").read_text())
    # Azure mounts the registered version as <models>/<name>/<version>/<the registered folder>
    version_dir = tmp_path_factory.mktemp("azureml-models") / trained[0]["register"]["model_name"] / "1"
    shutil.copytree(trained[2]["stages"]["train"]["outputs"]["mlflow_model_dir"], version_dir / "mlflow_model")
    port = free_port()
    env = {
        **os.environ,
        **deployment["environment_variables"],
        "AZUREML_MODEL_DIR": str(version_dir),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": "",
    }
    log = staged / "azmlinfsrv.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(python.parent / "azmlinfsrv"),
                "--entry_script",
                deployment["code_configuration"]["scoring_script"],
                "--port",
                str(port),
            ],
            cwd=staged / deployment["code_configuration"]["code"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(base + "/", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"azmlinfsrv did not start:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)
    yield base
    proc.terminate()
    proc.wait(timeout=30)


def test_the_liveness_route_answers(server):
    with urllib.request.urlopen(server + "/", timeout=5) as resp:
        assert resp.status == 200 and resp.read().decode().strip() == "Healthy"


def test_the_tutorials_payload_gets_the_training_answers(server, trained):
    pairs = single_turn_pairs(trained[2], 3)
    status, answers = post(
        server + "/score", {"input_data": [q for q, _ in pairs], "params": {"max_new_tokens": 96}}, key=None
    )
    assert status == 200 and answers == [a for _, a in pairs]


def test_message_lists_get_the_chat_template(server, trained):
    row = next(r for r in training_rows(trained[2]) if r["messages"][0]["role"] == "system")
    messages, answer = first_turn(row)
    assert post(server + "/score", {"input_data": [messages], "params": {"max_new_tokens": 96}}, key=None) == (
        200,
        [answer],
    )


def test_the_deploy_stages_test_request_is_answered(server, staged):
    status, answers = post(server + "/score", json.loads((staged / "sample-request.json").read_text()), key=None)
    assert status == 200 and len(answers) == 1 and isinstance(answers[0], str)


@pytest.mark.parametrize(
    "body,words",
    [
        ({"input_data": "not a list"}, "input_data must be a non-empty list"),
        ({"input_data": ["hi"], "params": {"max_new_tokens": 100000}}, "over this endpoint's limit of 256"),
        ({"prompt": "hi"}, '"input_data"'),
        (b"{not json", "not valid JSON"),
    ],
)
def test_a_bad_body_is_a_400_with_the_reason_once_encoded(server, body, words):
    status, reply = post(server + "/score", body, key=None)
    assert status == 400 and isinstance(reply, dict) and words in reply["error"], reply


def test_the_model_loads_from_the_folder_layout_azure_mounts(staged):
    """No relative import, no parent package: the script imports as azmlinfsrv loads it (by file path)."""
    script = staged / "deployment-code" / "serving" / "scoring.py"
    probe = (
        "import importlib.util as u, sys; s = u.spec_from_file_location('entry_module', sys.argv[1]); "
        "m = u.module_from_spec(s); s.loader.exec_module(m); print(m.init.__doc__ is not None)"
    )
    python = azure_envs.build(
        "inference", yaml.safe_load((staged / "conda-inference.yml").read_text())["dependencies"][-1]["pip"]
    )
    r = subprocess.run(
        [str(python), "-c", probe, str(script)],
        cwd=Path("/"),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr[-2000:]
