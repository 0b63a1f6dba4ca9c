"""The Azure backend's orchestration, against the recording MLClient stand-in (tests/support/azure_standin.py)."""

import re
import warnings
from types import SimpleNamespace

import pytest

with warnings.catch_warnings():  # the SDK's schemas warn about marshmallow 4 at import
    warnings.simplefilter("ignore")
    from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
    from azure.identity import CredentialUnavailableError

from runner.app import write_spec
from runner.azure import client as az_client
from runner.azure import deploy as az_deploy
from runner.azure import register as az_register
from runner.azure import resources, retry
from runner.azure import teardown as az_teardown
from runner.azure import train as az_train
from runner.context import Context
from runner.errors import StageFailed, UserError
from runner.manifest import Manifest
from runner.spec import azure_env_paths

from ..support import _endpoint  # noqa: F401  before promptflow: its home in a temporary folder
from ..support.azure_standin import AZURE, CLIENT_ID, KEY, SUBSCRIPTION, TENANT, FakeML, Killed, http_error

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture
def azure_ctx(compose_spec, tmp_path, monkeypatch):
    """(spec, ctx, fake client, log lines) for compute=a100, the data stage recorded as done."""
    spec = compose_spec("compute=a100", "model=phi35", "data=1pct")
    spec["azure"] = dict(AZURE)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_spec(spec, run_dir, azure_env_paths())
    data = run_dir / "data"
    data.mkdir()
    for name in ("train.jsonl", "test.jsonl"):
        (data / name).write_text('{"messages": []}\n')
    logs = []
    ctx = Context(run_dir, Manifest(run_dir), log=logs.append, stage="train")
    ctx.manifest.record(
        "data", "done", "h", {"train_file": str(data / "train.jsonl"), "test_file": str(data / "test.jsonl")}
    )
    fake = FakeML()
    for stage in (az_train, az_register, az_deploy, az_teardown):
        monkeypatch.setattr(stage, "client", lambda spec: fake)
    monkeypatch.setattr(retry, "_sleep", lambda s: None)
    return spec, ctx, fake, logs


def test_train_creates_environment_compute_and_job_then_streams(azure_ctx):
    spec, ctx, fake, logs = azure_ctx
    out = az_train.run(spec, ctx)
    assert fake.names() == [
        "environments.create_or_update",
        "compute.get",
        "compute.begin_create_or_update",
        "jobs.create_or_update",
        "jobs.stream",
        "jobs.get",
        "jobs.download",
    ]
    env = fake.details("environments.create_or_update")[0]["entity"]
    pip = env["conda_file"]["dependencies"][-1]["pip"]
    assert (
        env["image"] == spec["compute"]["image"]
        and "torch==2.13.0+cu126" in pip
        and "azureml-mlflow==1.62.0.post6" in pip
    )
    compute = fake.details("compute.begin_create_or_update")[0]["entity"]
    assert (compute["size"], compute["min_instances"], compute["max_instances"], compute["tier"]) == (
        "Standard_NC24ads_A100_v4",
        0,
        1,
        "dedicated",
    )
    assert "location" not in compute  # the workspace's region
    job = fake.details("jobs.create_or_update")[0]["job"]
    assert job.environment == f"{env['name']}:{env['version']}" and job.compute == "gpu-a100-cluster"
    assert job.experiment_name == "finetune-phi" and job.resources.instance_count == 1
    assert job.distribution.process_count_per_instance == 1
    base = ctx.run_dir / "azure"
    assert (base / job.inputs["train_file"].path).resolve() == (ctx.run_dir / "data" / "train.jsonl").resolve()
    assert (base / job.code / "trainer" / "fit.py").is_file() and (base / job.code / "spec.yaml").is_file()
    assert out["job_name"] == job.name and out["status"] == "Completed"
    assert "--save-model-only" in job.command and set(job.outputs) == {"model_output", "checkpoints"}
    assert out["model_path"] == f"azureml://jobs/{job.name}/outputs/model_output/paths/mlflow_model"
    # what was submitted is what job.yml says
    import yaml

    assert yaml.safe_load((base / "job.yml").read_text())["name"] == job.name


def test_train_reuses_an_existing_cluster(azure_ctx):
    spec, ctx, fake, _ = azure_ctx
    fake.computes["gpu-a100-cluster"] = SimpleNamespace(name="gpu-a100-cluster", size="Standard_NC24ads_A100_v4")
    az_train.run(spec, ctx)
    assert "compute.begin_create_or_update" not in fake.names()


def test_serverless_train_creates_no_compute_and_the_job_names_its_vm_size(azure_ctx):
    spec, ctx, fake, logs = azure_ctx
    spec["compute"]["cluster_name"] = None  # what compute=a100_serverless sets
    out = az_train.run(spec, ctx)
    assert not [n for n in fake.names() if n.startswith("compute.")] and not fake.computes  # no cluster made or read
    job = fake.details("jobs.create_or_update")[0]["job"]
    assert job.compute is None and job.resources.instance_type == "Standard_NC24ads_A100_v4"
    assert out["status"] == "Completed" and out["compute"] == "serverless Standard_NC24ads_A100_v4"
    assert any("serverless compute" in line and "no cluster" in line for line in logs)


def test_the_stand_in_refuses_jobs_azure_would_refuse(azure_ctx):
    """A job on a cluster the workspace does not have, or serverless without a VM size: 400, as Azure answers."""
    from azure.ai.ml import load_job

    spec, ctx, fake, _ = azure_ctx
    az_train.plan(spec, ctx)
    job = load_job(ctx.run_dir / "azure" / "job.yml")
    with pytest.raises(Exception, match="compute gpu-a100-cluster not found"):
        fake.jobs.create_or_update(job)
    job.compute = None
    with pytest.raises(Exception, match="serverless compute needs resources.instance_type"):
        fake.jobs.create_or_update(job)
    job.resources.instance_type = "Standard_NC24ads_A100_v4"
    assert fake.jobs.create_or_update(job).status == "Starting"


def test_failed_job_names_status_and_studio_url(azure_ctx):
    spec, ctx, fake, _ = azure_ctx
    fake.job_status = "Failed"
    with pytest.raises(StageFailed) as err:
        az_train.run(spec, ctx)
    job_name = fake.details("jobs.create_or_update")[0]["job"].name
    assert "status Failed" in str(err.value) and f"az ml job show --name {job_name} --web" in str(err.value)
    assert "CUDA out of memory" in str(err.value)


def test_transient_503_is_retried_with_backoff(azure_ctx, monkeypatch):
    spec, ctx, fake, logs = azure_ctx
    sleeps = []
    monkeypatch.setattr(retry, "_sleep", sleeps.append)
    fake.failures["jobs.create_or_update"] = [http_error(503, "service unavailable"), ServiceRequestError("reset")]
    out = az_train.run(spec, ctx)
    assert fake.names().count("jobs.create_or_update") == 3 and sleeps == [2.0, 4.0]
    assert out["status"] == "Completed" and any("retry 1/4" in line for line in logs)


def test_retries_are_bounded_and_permanent_errors_are_not_retried(azure_ctx, monkeypatch):
    spec, ctx, fake, _ = azure_ctx
    fake.failures["jobs.create_or_update"] = [http_error(429) for _ in range(10)]
    with pytest.raises(StageFailed):
        az_train.run(spec, ctx)
    assert fake.names().count("jobs.create_or_update") == retry.TRIES
    fake.calls.clear()
    fake.failures["environments.create_or_update"] = [http_error(400, "bad image")]
    with pytest.raises(StageFailed, match="bad image"):
        az_train.run(spec, ctx)
    assert fake.names() == ["environments.create_or_update"]


def test_sdk_requests_are_retried_by_azure_core_honouring_retry_after():
    """The MLClient the runner builds carries retry.POLICY on its service clients, and that policy, in azure-core's
    real pipeline against a real server, retries a 503 and a 429 (waiting their Retry-After) and not a 400."""
    import http.server
    import threading
    import time

    from azure.core import PipelineClient
    from azure.core.credentials import AccessToken
    from azure.core.pipeline.policies import RetryPolicy
    from azure.core.rest import HttpRequest

    class Token:
        def get_token(self, *scopes, **kwargs):
            return AccessToken("t", int(time.time()) + 3600)

    ml = az_client.new_client(Token(), ("sub", "rg", "ws"))
    policies = [
        c._config.retry_policy for c in vars(ml).values() if hasattr(getattr(c, "_config", None), "retry_policy")
    ]
    assert len(policies) > 5 and {(p.total_retries, p.backoff_factor) for p in policies} >= {(4, 2.0)}
    assert all(p.total_retries == retry.POLICY["retry_total"] for p in policies if p.backoff_factor == 2.0)

    replies = {"/flaky": [(503, "1"), (429, "1"), (200, None)], "/bad": [(400, None)]}
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, time.monotonic()))
            status, after = replies[self.path].pop(0) if len(replies[self.path]) > 1 else replies[self.path][0]
            self.send_response(status)
            if after:
                self.send_header("Retry-After", after)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        pipeline = PipelineClient(base, policies=[RetryPolicy(**retry.POLICY)])
        assert pipeline.send_request(HttpRequest("GET", f"{base}/flaky")).status_code == 200
        assert [p for p, _ in seen] == ["/flaky"] * 3
        assert seen[2][1] - seen[0][1] >= 1.9  # two Retry-After: 1 waits
        assert pipeline.send_request(HttpRequest("GET", f"{base}/bad")).status_code == 400
        assert [p for p, _ in seen].count("/bad") == 1
    finally:
        server.shutdown()


def test_register_creates_an_mlflow_model_from_the_job_output(azure_ctx):
    spec, ctx, fake, _ = azure_ctx
    ctx.manifest.record("train", "done", "h", {"job_name": "job-7", "model_path": resources.model_path("job-7")})
    out = az_register.run(spec, ctx)
    model = fake.details("models.create_or_update")[0]["entity"]
    assert model["type"] == "mlflow_model" and model["name"] == "phi3-chat-phi35"
    assert model["path"] == "azureml://jobs/job-7/outputs/model_output/paths/mlflow_model"
    assert model["tags"] == {"job_name": "job-7"}
    assert out == {"model_name": "phi3-chat-phi35", "model_version": "1", "job_name": "job-7"}  # no ARM id


def test_a_retried_registration_does_not_add_a_second_version(azure_ctx):
    spec, ctx, fake, logs = azure_ctx
    ctx.manifest.record("train", "done", "h", {"job_name": "job-7", "model_path": resources.model_path("job-7")})
    fake.failures_after["models.create_or_update"] = [http_error(503, "gateway timeout")]  # it went through
    out = az_register.run(spec, ctx)
    assert out["model_version"] == "1" and len(fake.models_by_name["phi3-chat-phi35"]) == 1
    assert fake.names().count("models.create_or_update") == 1 and any("not repeating it" in line for line in logs)
    # a failure before the version existed is retried
    ctx.manifest.record("train", "done", "h", {"job_name": "job-8", "model_path": resources.model_path("job-8")})
    fake.failures["models.create_or_update"] = [http_error(503)]
    assert az_register.run(spec, ctx)["model_version"] == "2"
    assert fake.names().count("models.create_or_update") == 3


def test_a_retried_submit_follows_the_job_it_already_started(azure_ctx):
    spec, ctx, fake, _ = azure_ctx
    fake.failures_after["jobs.create_or_update"] = [ServiceRequestError("connection reset")]
    out = az_train.run(spec, ctx)
    assert fake.names().count("jobs.create_or_update") == 1 and list(fake.jobs_by_name) == [out["job_name"]]


def deploy_once(spec, ctx, version):
    ctx.manifest.record("register", "done", "h", {"model_name": "phi3-chat-phi35", "model_version": version})
    return az_deploy.run(spec, ctx)


def test_deploy_is_blue_green_without_downtime(azure_ctx):
    spec, ctx, fake, _ = azure_ctx
    first = deploy_once(spec, ctx, "1")
    assert fake.names() == [
        "online_endpoints.get",
        "online_endpoints.begin_create_or_update",
        "online_deployments.begin_create_or_update",
        "online_endpoints.invoke",
        "online_endpoints.get",
        "online_endpoints.begin_create_or_update",
        "online_endpoints.get",
    ]
    created = fake.details("online_endpoints.begin_create_or_update")[0]["entity"]
    assert created["auth_mode"] == "key" and created["identity"]["type"] == "user_assigned"
    assert created["identity"]["user_assigned_identities"][0]["resource_id"] == AZURE["managed_identity_resource_id"]
    d = fake.details("online_deployments.begin_create_or_update")[0]
    assert d["traffic_share"] == 0
    dep = d["deployment"]
    assert dep.model == "phi3-chat-phi35:1" and dep.instance_type == "Standard_E4s_v3" and dep.instance_count == 1
    assert dep.environment_variables == {
        "MAX_NEW_TOKENS_LIMIT": "256",
        "REQUEST_TIMEOUT_MS": "180000",
    }  # nothing the scoring script does not read
    assert dep.request_settings.max_concurrent_requests_per_instance == 3
    assert dep.liveness_probe.initial_delay == 500 and dep.readiness_probe.success_threshold == 1
    assert dep.code_configuration.scoring_script == "serving/scoring.py"
    invoke = fake.details("online_endpoints.invoke")[0]
    hello = [[{"role": "user", "content": "Hello"}]]  # the one /score client's body (common/score_client.py)
    request = {"input_data": hello, "params": {"max_new_tokens": 8, "return_full_text": False}}
    assert invoke == {"deployment_name": "blue", "request": request}
    assert fake.details("online_endpoints.begin_create_or_update")[1]["traffic"] == {"blue": 100}
    name = resources.endpoint_name(spec)
    assert first == {
        "kind": "azureml",
        "endpoint_name": name,
        "deployment_name": "blue",
        "scoring_uri": f"https://{name}.eastus2.inference.ml.azure.com/score",
        "model": "phi3-chat-phi35:1",
    }

    fake.calls.clear()
    second = deploy_once(spec, ctx, "2")
    assert fake.names() == [
        "online_endpoints.get",
        "online_deployments.list",  # none busy: the rollout goes on
        "online_deployments.begin_create_or_update",
        "online_endpoints.invoke",
        "online_endpoints.get",
        "online_endpoints.begin_create_or_update",
        "online_deployments.begin_delete",
        "online_endpoints.get",
    ]
    d = fake.details("online_deployments.begin_create_or_update")[0]
    assert d["deployment"].name == "green" and d["traffic_share"] == 0 and d["deployment"].model == "phi3-chat-phi35:2"
    assert fake.details("online_endpoints.invoke")[0]["deployment_name"] == "green"
    assert fake.details("online_endpoints.begin_create_or_update")[0]["traffic"] == {"green": 100}
    assert fake.details("online_deployments.begin_delete")[0] == {"name": "blue"}
    assert second["deployment_name"] == "green" and set(fake.deployments) == {"green"}


def test_a_new_deployment_that_does_not_answer_is_deleted_and_traffic_stays(azure_ctx):
    spec, ctx, fake, logs = azure_ctx
    deploy_once(spec, ctx, "1")
    fake.failures["online_endpoints.invoke"] = [http_error(424, "model failed to load")]
    with pytest.raises(StageFailed, match="green did not answer") as err:
        deploy_once(spec, ctx, "2")
    assert "log line" in str(err.value) and "green was deleted" in str(err.value) and "$0.25/h" in str(err.value)
    assert fake.endpoints[resources.endpoint_name(spec)].traffic == {"blue": 100}
    assert fake.details("online_deployments.begin_delete") == [{"name": "green"}]  # never the live one
    assert set(fake.deployments) == {"blue"} and any("deleted the failed deployment green" in line for line in logs)


def test_a_deployment_that_fails_to_provision_is_deleted_too(azure_ctx):
    spec, ctx, fake, _ = azure_ctx
    # the container crashed at start: Azure keeps the deployment, in state Failed, and bills its VM
    fake.failures_after["online_deployments.begin_create_or_update"] = [http_error(400, "container crashed")]
    with pytest.raises(StageFailed, match="container crashed") as err:
        deploy_once(spec, ctx, "1")
    assert "(no deployment serves)" in str(err.value) and "blue was deleted" in str(err.value)
    assert fake.details("online_deployments.begin_delete") == [{"name": "blue"}] and not fake.deployments


def test_a_rejected_deployment_leaves_nothing_to_delete(azure_ctx):
    spec, ctx, fake, _ = azure_ctx
    fake.failures["online_deployments.begin_create_or_update"] = [http_error(400, "instance type not allowed")]
    with pytest.raises(StageFailed, match="instance type not allowed") as err:
        deploy_once(spec, ctx, "1")
    assert "created no deployment blue, nothing bills" in str(err.value)


def test_a_gpu_deployment_rolls_out_on_the_gpu_image_and_a_size_azure_refuses_is_said(azure_ctx):
    """deploy.instance_type=Standard_NC4as_T4_v3: the deployment Azure receives runs the GPU inference image with
    PyTorch's CUDA build; a VM size managed online endpoints do not take is refused as Azure refuses it."""
    spec, ctx, fake, _ = azure_ctx
    spec["deploy"]["instance_type"] = "Standard_NC4as_T4_v3"
    deploy_once(spec, ctx, "1")
    sent = fake.details("online_deployments.begin_create_or_update")[0]["deployment"]
    assert sent.instance_type == "Standard_NC4as_T4_v3" and sent.environment.image.endswith("-gpu-inference:latest")
    assert "+cu" in (resources.folder(ctx) / "conda-inference.yml").read_text()
    spec["deploy"]["instance_type"] = "Standard_B2s"
    with pytest.raises(StageFailed, match="not supported for managed online endpoints"):
        deploy_once(spec, ctx, "2")


def test_a_rollout_beside_a_deployment_in_progress_is_refused(azure_ctx):
    """Another machine is rolling out to the same endpoint: its deployment is Updating. Nothing is touched."""
    spec, ctx, fake, _ = azure_ctx
    deploy_once(spec, ctx, "1")
    fake.deployments["blue"]._provisioning_state = "Updating"
    before = len(fake.calls)
    with pytest.raises(UserError, match="deployment blue of endpoint .* is updating") as err:
        deploy_once(spec, ctx, "2")
    assert "nothing was changed" in str(err.value) and "az ml online-deployment show --name blue" in str(err.value)
    assert [n for n, _ in fake.calls[before:]] == ["online_endpoints.get", "online_deployments.list"]


def test_a_rollout_killed_before_traffic_moved_is_finished_by_the_rerun_with_one_deployment(azure_ctx):
    spec, ctx, fake, _ = azure_ctx
    deploy_once(spec, ctx, "1")  # blue serves
    fake.provisioning = "Creating"  # Azure goes on creating green after the runner is killed mid-call
    fake.failures_after["online_deployments.begin_create_or_update"] = [Killed()]
    with pytest.raises(Killed):
        deploy_once(spec, ctx, "2")
    endpoint = fake.endpoints[resources.endpoint_name(spec)]
    assert endpoint.traffic == {"blue": 100} and set(fake.deployments) == {"blue", "green"}
    with pytest.raises(UserError, match="green of endpoint .* is creating"):  # re-run at once: refused, untouched
        deploy_once(spec, ctx, "2")
    assert endpoint.traffic == {"blue": 100} and set(fake.deployments) == {"blue", "green"}
    fake.deployments["green"]._provisioning_state = "Succeeded"  # Azure finished it
    fake.provisioning = "Succeeded"
    out = deploy_once(spec, ctx, "2")
    assert out["deployment_name"] == "green" and fake.endpoints[out["endpoint_name"]].traffic == {"green": 100}
    assert set(fake.deployments) == {"green"}  # one deployment bills; blue was deleted only after traffic moved
    assert fake.deployments["green"].model == "phi3-chat-phi35:2"


def test_deploy_rejects_an_empty_answer(azure_ctx):
    spec, ctx, fake, _ = azure_ctx
    fake.answer = "[]"
    with pytest.raises(StageFailed, match="test request"):
        deploy_once(spec, ctx, "1")
    assert not fake.endpoints[resources.endpoint_name(spec)].traffic and not fake.deployments


def test_credentials_come_from_azure_and_the_key_is_written_nowhere(azure_ctx):
    spec, ctx, fake, logs = azure_ctx
    deploy_once(spec, ctx, "1")
    uri, key = az_deploy.endpoint_credentials(spec, ctx)
    assert uri.endswith("/score") and key == KEY
    assert fake.names()[-2:] == ["online_endpoints.get", "online_endpoints.get_keys"]
    for path in ctx.run_dir.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert KEY not in text and SUBSCRIPTION not in text and CLIENT_ID not in text, path
    assert not any(KEY in line for line in logs)


def test_an_aad_token_endpoint_is_a_clear_error_not_a_missing_key(azure_ctx):
    spec, ctx, fake, _ = azure_ctx
    fake.auth_mode = "aad_token"  # an endpoint someone else made with the same name
    deploy_once(spec, ctx, "1")
    with pytest.raises(UserError, match="auth_mode aad_token") as err:
        az_deploy.endpoint_credentials(spec, ctx)
    assert "deploy.endpoint_name" in str(err.value)


def test_a_full_recorded_run_keeps_no_subscription_or_tenant_id(azure_ctx, capsys):
    """Studio URLs and ARM ids carry them; the run directory and the log keep job names and name:version."""
    spec, ctx, fake, logs = azure_ctx
    for stage, module in (("train", az_train), ("register", az_register), ("deploy", az_deploy)):
        ctx.manifest.record(stage, "done", "h", module.run(spec, ctx))
    az_deploy.endpoint_credentials(spec, ctx)
    ctx.manifest.record("teardown", "done", "h", az_teardown.run(spec, ctx))
    assert any(SUBSCRIPTION in str(job.studio_url) and TENANT in job.studio_url for job in fake.jobs_by_name.values())
    files = [p for p in ctx.run_dir.rglob("*") if p.is_file()]
    assert len(files) > 10
    printed = capsys.readouterr()
    assert "Web View: https://ml.azure.com/runs/" in printed.out  # the SDK's own line, scrubbed
    for text in [p.read_text(errors="replace") for p in files] + logs + [printed.out, printed.err]:
        assert (
            SUBSCRIPTION not in text
            and TENANT not in text
            and "/subscriptions/" not in text.replace("<from $AZURE_MANAGED_IDENTITY_RESOURCE_ID>", "")
        ), text[:300]


def test_the_default_endpoint_name_is_stable_valid_and_differs_per_workspace(azure_ctx):
    spec = azure_ctx[0]
    name = resources.endpoint_name(spec)
    assert name == resources.endpoint_name(spec) and re.fullmatch(r"[a-z][a-z0-9-]{1,30}[a-z0-9]", name)
    assert name.startswith("phi3-default-") and SUBSCRIPTION[:8] not in name
    other = {**spec, "azure": {**spec["azure"], "workspace_name": "someone-else"}}
    assert resources.endpoint_name(other) != name
    long = {**spec, "run": {**spec["run"], "name": "My_Very.Long.Experiment.Name_v2"}}
    assert len(resources.endpoint_name(long)) <= 32
    chosen = {**spec, "deploy": {**spec["deploy"], "endpoint_name": "my-chat"}}
    assert resources.endpoint_name(chosen) == "my-chat"


def test_teardown_deletes_the_endpoint_and_is_idempotent(azure_ctx):
    spec, ctx, fake, _ = azure_ctx
    ctx.manifest.record("deploy", "done", "h", deploy_once(spec, ctx, "1"))
    assert az_teardown.run(spec, ctx) == {"deleted": resources.endpoint_name(spec)}
    assert ctx.manifest.entry("deploy")["status"] == "stopped"  # the next deploy creates it again
    assert az_teardown.run(spec, ctx) == {"deleted": None}
    assert fake.names().count("online_endpoints.begin_delete") == 1


def test_teardown_forgets_the_runs_prompt_flow_connection(azure_ctx):
    from promptflow.client import PFClient

    from runner.stages import prompt_flow

    spec, ctx, fake, logs = azure_ctx
    ctx.manifest.record("deploy", "done", "h", deploy_once(spec, ctx, "1"))
    url, key = az_deploy.endpoint_credentials(spec, ctx)
    name = prompt_flow.connection_name(spec, ctx.run_dir)
    prompt_flow.keep_promptflow_local()
    prompt_flow.save_connection(PFClient(), name, url, key)  # what the chat stage writes
    ctx.manifest.record("chat", "done", "h", {"connection": name, "endpoint_url": url})
    az_teardown.run(spec, ctx)
    assert f"[teardown] deleted the Prompt flow connection {name}" in logs
    assert name not in [c.name for c in PFClient().connections.list()]
    az_teardown.run(spec, ctx)  # again: nothing left to delete, no error


def test_missing_endpoint_for_chat_is_a_stage_failure(azure_ctx):
    spec, ctx, _, _ = azure_ctx
    with pytest.raises(StageFailed, match="does not exist"):
        az_deploy.endpoint_credentials(spec, ctx)


class NoLogin:
    def __init__(self, *a, **kw):
        pass

    def get_token(self, *scopes, **kw):
        raise CredentialUnavailableError("DefaultAzureCredential failed to retrieve a token")


def test_client_without_login_is_a_user_error(monkeypatch):
    import azure.identity

    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", NoLogin)
    with pytest.raises(UserError) as err:
        az_client.client({"azure": dict(AZURE)})
    assert "az login" in str(err.value) and "AZURE_CLIENT_SECRET" in str(err.value)


def test_expired_login_mid_stage_is_a_user_error(azure_ctx):
    spec, ctx, fake, _ = azure_ctx
    fake.failures["environments.create_or_update"] = [ClientAuthenticationError("token expired")]
    with pytest.raises(UserError, match="az login"):
        az_train.run(spec, ctx)


def test_azure_error_messages_lose_the_ids_they_carry(azure_ctx):
    spec, ctx, fake, logs = azure_ctx
    scope = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-test/providers/Microsoft.MachineLearningServices"
    fake.failures["environments.create_or_update"] = [http_error(403, f"AuthorizationFailed over scope '{scope}'")]
    with pytest.raises(StageFailed) as err:
        az_train.run(spec, ctx)
    assert "AuthorizationFailed" in str(err.value) and "/subscriptions/<subscription>/" in str(err.value)
    assert SUBSCRIPTION not in str(err.value)


def test_a_check_that_fails_does_not_turn_into_a_second_registration(azure_ctx):
    spec, ctx, fake, _ = azure_ctx
    ctx.manifest.record("train", "done", "h", {"job_name": "job-7", "model_path": resources.model_path("job-7")})
    fake.failures_after["models.create_or_update"] = [http_error(503)]
    fake.failures["models.list"] = [http_error(503) for _ in range(retry.TRIES)]  # the check gives up too
    with pytest.raises(StageFailed):
        az_register.run(spec, ctx)
    assert fake.names().count("models.create_or_update") == 1 and len(fake.models_by_name["phi3-chat-phi35"]) == 1
