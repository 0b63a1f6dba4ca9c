"""The Azure backend's orchestration, against a recording stand-in for MLClient (the one boundary faked).

The stand-in checks what crosses the boundary: every entity handed to it is serialized with the SDK's own
_to_dict(), which fails on an entity the service would reject for its shape.
"""
import copy
import json
import warnings
from types import SimpleNamespace

import pytest

with warnings.catch_warnings():  # the SDK's schemas warn about marshmallow 4 at import
    warnings.simplefilter("ignore")
    from azure.ai.ml.entities import AmlCompute, Command, Environment, ManagedOnlineDeployment, ManagedOnlineEndpoint, Model
    from azure.ai.ml.exceptions import JobException
    from azure.core.exceptions import (ClientAuthenticationError, HttpResponseError, ResourceNotFoundError,
                                       ServiceRequestError)
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

pytestmark = pytest.mark.filterwarnings("ignore")

AZURE = {"subscription_id": "sub-0000", "resource_group": "rg-test", "workspace_name": "ws-test",
         "managed_identity_resource_id": "/subscriptions/sub-0000/resourceGroups/rg-test/providers/"
                                         "Microsoft.ManagedIdentity/userAssignedIdentities/uai",
         "managed_identity_client_id": "client-0000"}
KEY = "not-a-real-key-5f3a"
STUDIO = "https://ml.azure.com/runs/{}"


def http_error(status, message="boom"):
    exc = HttpResponseError(message=message)
    exc.status_code = status
    return exc


def dump(entity) -> dict:
    """The SDK's own serializer. An endpoint is dumped from a copy: the identity schema rewrites what it dumps."""
    return (copy.deepcopy(entity) if isinstance(entity, ManagedOnlineEndpoint) else entity)._to_dict()


class Poller:
    def __init__(self, value=None):
        self.value = value

    def result(self):
        return self.value


class FakeML:
    """Records each call as (operation, details); fails an operation when told to; keeps a tiny state."""

    def __init__(self, job_status="Completed", answer='["Hi there"]'):
        self.calls, self.failures = [], {}
        self.job_status, self.answer = job_status, answer
        self.computes, self.endpoints, self.deployments, self.model_versions = {}, {}, {}, 0
        self.environments = SimpleNamespace(create_or_update=self.op("environments.create_or_update", self._env))
        self.compute = SimpleNamespace(get=self.op("compute.get", self._compute_get),
                                       begin_create_or_update=self.op("compute.begin_create_or_update", self._compute))
        self.jobs = SimpleNamespace(create_or_update=self.op("jobs.create_or_update", self._job),
                                    stream=self.op("jobs.stream", self._stream),
                                    get=self.op("jobs.get", self._job_get))
        self.models = SimpleNamespace(create_or_update=self.op("models.create_or_update", self._model))
        self.online_endpoints = SimpleNamespace(
            get=self.op("online_endpoints.get", self._endpoint_get),
            begin_create_or_update=self.op("online_endpoints.begin_create_or_update", self._endpoint),
            invoke=self.op("online_endpoints.invoke", self._invoke),
            get_keys=self.op("online_endpoints.get_keys", lambda name: SimpleNamespace(primary_key=KEY)),
            begin_delete=self.op("online_endpoints.begin_delete", self._endpoint_delete))
        self.online_deployments = SimpleNamespace(
            begin_create_or_update=self.op("online_deployments.begin_create_or_update", self._deployment),
            begin_delete=self.op("online_deployments.begin_delete", self._deployment_delete),
            get_logs=self.op("online_deployments.get_logs", lambda **kw: "log line"))

    def op(self, name, fn):
        def call(*args, **kwargs):
            self.calls.append((name, None))
            pending = self.failures.get(name)
            if pending:
                raise pending.pop(0)
            return fn(*args, **kwargs)
        return call

    def note(self, **details):  # what the last call carried
        self.calls[-1] = (self.calls[-1][0], details)

    def names(self):
        return [name for name, _ in self.calls]

    # each handler validates its entity with the SDK's own serializer before keeping it
    def _env(self, env):
        assert isinstance(env, Environment)
        self.note(entity=dump(env))
        return env

    def _compute_get(self, name):
        if name not in self.computes:
            raise ResourceNotFoundError(f"compute {name} not found")
        return self.computes[name]

    def _compute(self, compute):
        assert isinstance(compute, AmlCompute)
        self.note(entity=dump(compute))
        self.computes[compute.name] = compute
        return Poller(compute)

    def _job(self, job):
        assert isinstance(job, Command)
        self.note(entity=dump(job), job=job)
        return SimpleNamespace(name=job.name, studio_url=STUDIO.format(job.name), status="Starting")

    def _stream(self, name):
        if self.job_status == "Failed":
            error = json.dumps({"code": "UserError", "message": "CUDA out of memory"}, indent=4)
            raise JobException(message=f"Exception : \n {error} ", no_personal_data_message="failed job")

    def _job_get(self, name):
        return SimpleNamespace(name=name, status=self.job_status, studio_url=STUDIO.format(name))

    def _model(self, model):
        assert isinstance(model, Model)
        self.note(entity=dump(model))
        self.model_versions += 1
        return SimpleNamespace(name=model.name, version=str(self.model_versions),
                               id=f"azureml:{model.name}:{self.model_versions}")

    def _endpoint_get(self, name):
        if name not in self.endpoints:
            raise ResourceNotFoundError(f"endpoint {name} not found")
        return self.endpoints[name]

    def _endpoint(self, endpoint):
        assert isinstance(endpoint, ManagedOnlineEndpoint)
        self.note(entity=dump(endpoint), traffic=dict(endpoint.traffic or {}))
        missing = set(endpoint.traffic or {}) - set(self.deployments)
        assert not missing, f"traffic to deployments that do not exist: {missing}"
        endpoint._scoring_uri = f"https://{endpoint.name}.eastus2.inference.ml.azure.com/score"
        self.endpoints[endpoint.name] = endpoint
        return Poller(endpoint)

    def _endpoint_delete(self, name):
        self.endpoints.pop(name)
        self.deployments.clear()
        return Poller()

    def _deployment(self, deployment):
        assert isinstance(deployment, ManagedOnlineDeployment)
        endpoint = self.endpoints[deployment.endpoint_name]
        self.note(entity=dump(deployment), deployment=deployment,
                  traffic_share=(endpoint.traffic or {}).get(deployment.name, 0))
        self.deployments[deployment.name] = deployment
        return Poller(deployment)

    def _deployment_delete(self, name, endpoint_name):
        assert not (self.endpoints[endpoint_name].traffic or {}).get(name), "deleting a deployment that has traffic"
        self.note(name=name)
        self.deployments.pop(name)
        return Poller()

    def _invoke(self, endpoint_name, request_file, deployment_name):
        self.note(deployment_name=deployment_name, request=json.loads(open(request_file).read()))
        assert deployment_name in self.deployments
        return self.answer


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
    ctx = Context(run_dir, Manifest(run_dir), log=logs.append)
    ctx.manifest.record("data", "done", "h", {"train_file": str(data / "train.jsonl"), "test_file": str(data / "test.jsonl")})
    fake = FakeML()
    for stage in (az_train, az_register, az_deploy, az_teardown):
        monkeypatch.setattr(stage, "client", lambda spec: fake)
    monkeypatch.setattr(retry, "_sleep", lambda s: None)
    return spec, ctx, fake, logs


def details(fake, name):
    return [d for n, d in fake.calls if n == name]


def test_train_creates_environment_compute_and_job_then_streams(azure_ctx):
    spec, ctx, fake, logs = azure_ctx
    out = az_train.run(spec, ctx)
    assert fake.names() == ["environments.create_or_update", "compute.get", "compute.begin_create_or_update",
                            "jobs.create_or_update", "jobs.stream", "jobs.get"]
    env = details(fake, "environments.create_or_update")[0]["entity"]
    assert env["image"] == spec["compute"]["image"] and "torch==2.13.0" in env["conda_file"]["dependencies"][-1]["pip"]
    compute = details(fake, "compute.begin_create_or_update")[0]["entity"]
    assert (compute["size"], compute["min_instances"], compute["max_instances"], compute["tier"]) == \
        ("Standard_NC24ads_A100_v4", 0, 1, "dedicated")
    job = details(fake, "jobs.create_or_update")[0]["job"]
    assert job.environment == f"{env['name']}:{env['version']}" and job.compute == "gpu-a100-cluster"
    assert job.experiment_name == "finetune-phi" and job.resources.instance_count == 1
    assert job.distribution.process_count_per_instance == 1
    base = ctx.run_dir / "azure"
    assert (base / job.inputs["train_file"].path).resolve() == (ctx.run_dir / "data" / "train.jsonl").resolve()
    assert (base / job.code / "trainer" / "fit.py").is_file() and (base / job.code / "spec.yaml").is_file()
    assert out["job_name"] == job.name and out["status"] == "Completed"
    assert out["studio_url"] == STUDIO.format(job.name)
    assert out["model_path"] == f"azureml://jobs/{job.name}/outputs/model_output/paths/mlflow_model"
    # what was submitted is what job.yml says
    import yaml
    assert yaml.safe_load((base / "job.yml").read_text())["name"] == job.name


def test_train_reuses_an_existing_cluster(azure_ctx):
    spec, ctx, fake, _ = azure_ctx
    fake.computes["gpu-a100-cluster"] = SimpleNamespace(name="gpu-a100-cluster", size="Standard_NC24ads_A100_v4")
    az_train.run(spec, ctx)
    assert "compute.begin_create_or_update" not in fake.names()


def test_failed_job_names_status_and_studio_url(azure_ctx):
    spec, ctx, fake, _ = azure_ctx
    fake.job_status = "Failed"
    with pytest.raises(StageFailed) as err:
        az_train.run(spec, ctx)
    job_name = details(fake, "jobs.create_or_update")[0]["job"].name
    assert "status Failed" in str(err.value) and STUDIO.format(job_name) in str(err.value)
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


def test_register_creates_an_mlflow_model_from_the_job_output(azure_ctx):
    spec, ctx, fake, _ = azure_ctx
    ctx.manifest.record("train", "done", "h", {"job_name": "job-7", "model_path": resources.model_path("job-7")})
    out = az_register.run(spec, ctx)
    model = details(fake, "models.create_or_update")[0]["entity"]
    assert model["type"] == "mlflow_model" and model["name"] == "phi3-chat-phi35"
    assert model["path"] == "azureml://jobs/job-7/outputs/model_output/paths/mlflow_model"
    assert out == {"model_name": "phi3-chat-phi35", "model_version": "1", "model_id": "azureml:phi3-chat-phi35:1"}


def deploy_once(spec, ctx, version):
    ctx.manifest.record("register", "done", "h", {"model_name": "phi3-chat-phi35", "model_version": version})
    return az_deploy.run(spec, ctx)


def test_deploy_is_blue_green_without_downtime(azure_ctx):
    spec, ctx, fake, _ = azure_ctx
    first = deploy_once(spec, ctx, "1")
    assert fake.names() == ["online_endpoints.get", "online_endpoints.begin_create_or_update",
                            "online_deployments.begin_create_or_update", "online_endpoints.invoke",
                            "online_endpoints.get", "online_endpoints.begin_create_or_update", "online_endpoints.get"]
    created = details(fake, "online_endpoints.begin_create_or_update")[0]["entity"]
    assert created["auth_mode"] == "key" and created["identity"]["type"] == "user_assigned"
    assert created["identity"]["user_assigned_identities"][0]["resource_id"] == AZURE["managed_identity_resource_id"]
    d = details(fake, "online_deployments.begin_create_or_update")[0]
    assert d["traffic_share"] == 0
    dep = d["deployment"]
    assert dep.model == "phi3-chat-phi35:1" and dep.instance_type == "Standard_E4s_v3" and dep.instance_count == 1
    assert dep.environment_variables["SUBSCRIPTION_ID"] == "sub-0000"
    assert dep.environment_variables["UAI_CLIENT_ID"] == "client-0000"
    assert dep.request_settings.max_concurrent_requests_per_instance == 3
    assert dep.liveness_probe.initial_delay == 500 and dep.readiness_probe.success_threshold == 1
    assert dep.code_configuration.scoring_script == "trainer/scoring.py"
    invoke = details(fake, "online_endpoints.invoke")[0]
    assert invoke == {"deployment_name": "blue", "request": {"input_data": ["Hello"], "params": {"max_new_tokens": 8}}}
    assert details(fake, "online_endpoints.begin_create_or_update")[1]["traffic"] == {"blue": 100}
    assert first == {"kind": "azureml", "endpoint_name": "phi3-chat-default", "deployment_name": "blue",
                     "scoring_uri": "https://phi3-chat-default.eastus2.inference.ml.azure.com/score", "model_id": None}

    fake.calls.clear()
    second = deploy_once(spec, ctx, "2")
    assert fake.names() == ["online_endpoints.get", "online_deployments.begin_create_or_update",
                            "online_endpoints.invoke", "online_endpoints.get",
                            "online_endpoints.begin_create_or_update", "online_deployments.begin_delete",
                            "online_endpoints.get"]
    d = details(fake, "online_deployments.begin_create_or_update")[0]
    assert d["deployment"].name == "green" and d["traffic_share"] == 0 and d["deployment"].model == "phi3-chat-phi35:2"
    assert details(fake, "online_endpoints.invoke")[0]["deployment_name"] == "green"
    assert details(fake, "online_endpoints.begin_create_or_update")[0]["traffic"] == {"green": 100}
    assert details(fake, "online_deployments.begin_delete")[0] == {"name": "blue"}
    assert second["deployment_name"] == "green" and set(fake.deployments) == {"green"}


def test_deploy_keeps_traffic_when_the_new_deployment_does_not_answer(azure_ctx):
    spec, ctx, fake, _ = azure_ctx
    deploy_once(spec, ctx, "1")
    fake.failures["online_endpoints.invoke"] = [http_error(424, "model failed to load")]
    with pytest.raises(StageFailed, match="green did not answer") as err:
        deploy_once(spec, ctx, "2")
    assert "log line" in str(err.value)
    assert fake.endpoints["phi3-chat-default"].traffic == {"blue": 100}
    assert "online_deployments.begin_delete" not in fake.names()


def test_deploy_rejects_an_empty_answer(azure_ctx):
    spec, ctx, fake, _ = azure_ctx
    fake.answer = "[]"
    with pytest.raises(StageFailed, match="test request"):
        deploy_once(spec, ctx, "1")
    assert not fake.endpoints["phi3-chat-default"].traffic


def test_credentials_come_from_azure_and_the_key_is_written_nowhere(azure_ctx):
    spec, ctx, fake, logs = azure_ctx
    deploy_once(spec, ctx, "1")
    uri, key = az_deploy.endpoint_credentials(spec, ctx)
    assert uri.endswith("/score") and key == KEY
    assert fake.names()[-2:] == ["online_endpoints.get", "online_endpoints.get_keys"]
    for path in ctx.run_dir.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert KEY not in text and "sub-0000" not in text and "client-0000" not in text, path
    assert not any(KEY in line for line in logs)


def test_teardown_deletes_the_endpoint_and_is_idempotent(azure_ctx):
    spec, ctx, fake, _ = azure_ctx
    ctx.manifest.record("deploy", "done", "h", deploy_once(spec, ctx, "1"))
    assert az_teardown.run(spec, ctx) == {"deleted": "phi3-chat-default"}
    assert ctx.manifest.entry("deploy")["status"] == "stopped"  # the next deploy creates it again
    assert az_teardown.run(spec, ctx) == {"deleted": None}
    assert fake.names().count("online_endpoints.begin_delete") == 1


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
