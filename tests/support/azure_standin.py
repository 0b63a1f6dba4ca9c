"""A recording stand-in for azure-ai-ml's MLClient: the one boundary faked, as strict as the service.

Every entity handed to it goes through the SDK's own serializer (_to_dict), which fails on a shape the service
would reject. What comes back is shaped as Azure returns it: Studio URLs that carry the subscription and tenant
(wsid=/subscriptions/<id>/...&tid=<tenant>), ARM ids, azure-core LROPollers, 404s as ResourceNotFoundError.
"""

import copy
import json
import shutil
import warnings
from types import SimpleNamespace

with warnings.catch_warnings():  # the SDK's schemas warn about marshmallow 4 at import
    warnings.simplefilter("ignore")
    from azure.ai.ml.entities import (
        AmlCompute,
        Command,
        Environment,
        ManagedOnlineDeployment,
        ManagedOnlineEndpoint,
        Model,
    )
    from azure.ai.ml.exceptions import JobException
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
    from azure.core.polling import LROPoller, NoPolling

SUBSCRIPTION = "5c9b3e2a-1f0d-4c6e-9a8b-7d2e4f6a8c01"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "0d4f6a8c-2e1b-4c3d-8e9f-1a2b3c4d5e6f"
AZURE = {
    "subscription_id": SUBSCRIPTION,
    "resource_group": "rg-test",
    "workspace_name": "ws-test",
    "managed_identity_resource_id": f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-test/providers/"
    "Microsoft.ManagedIdentity/userAssignedIdentities/uai",
    "managed_identity_client_id": CLIENT_ID,
}
KEY = "not-a-real-key-5f3a"
REGION = "eastus2"
WORKSPACE_ID = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{AZURE['resource_group']}/providers/"
    f"Microsoft.MachineLearningServices/workspaces/{AZURE['workspace_name']}"
)


def studio_url(job_name: str) -> str:
    return (
        f"https://ml.azure.com/runs/{job_name}?wsid=/subscriptions/{SUBSCRIPTION}/resourcegroups/"
        f"{AZURE['resource_group']}/workspaces/{AZURE['workspace_name']}&tid={TENANT}"
    )


# The VM sizes managed online endpoints accept (Azure ML docs, "Managed online endpoints SKU list"): a deployment on
# any other is refused with 400, as Azure refuses it
ONLINE_SKUS = (
    {f"Standard_DS{n}_v2" for n in (1, 2, 3, 4, 5)}
    | {f"Standard_F{n}s_v2" for n in (2, 4, 8, 16, 32, 48, 64, 72)}
    | {f"Standard_E{n}s_v3" for n in (2, 4, 8, 16, 32, 48, 64)}
    | {"Standard_NC6s_v3", "Standard_NC12s_v3", "Standard_NC24s_v3", "Standard_NC24rs_v3"}
    | {"Standard_NC4as_T4_v3", "Standard_NC8as_T4_v3", "Standard_NC16as_T4_v3", "Standard_NC64as_T4_v3"}
    | {"Standard_NC24ads_A100_v4", "Standard_NC48ads_A100_v4", "Standard_NC96ads_A100_v4"}
    | {"Standard_ND96asr_v4", "Standard_ND96amsr_A100_v4", "Standard_ND40rs_v2"}
    | {"Standard_NC40ads_H100_v5", "Standard_NC80adis_H100_v5", "Standard_ND96isr_H100_v5"}
)


def http_error(status, message="boom"):
    exc = HttpResponseError(message=message)
    exc.status_code = status
    return exc


def dump(entity) -> dict:
    """The SDK's own serializer. An endpoint is dumped from a copy: the identity schema rewrites what it dumps."""
    return (copy.deepcopy(entity) if isinstance(entity, ManagedOnlineEndpoint) else entity)._to_dict()


BUSY = ("Creating", "Updating", "Deleting")  # a deployment's provisioning states while an operation runs


class Killed(BaseException):
    """The runner's process SIGKILLed mid-call: nothing of it catches this, Azure goes on with what it was asked."""


def poller(value=None) -> LROPoller:
    """A finished long-running operation, as the SDK's begin_* calls return it."""
    return LROPoller(None, value, lambda v: v, NoPolling())


class FakeML:
    """Records each call as (operation, details); fails an operation when told to; keeps the workspace's state.

    failures[op]: exceptions raised instead of the call; failures_after[op]: raised after it took effect
    (the request went through, the answer was lost).
    """

    def __init__(
        self,
        job_status="Completed",
        answer='["Hi there"]',
        auth_mode="key",
        lifecycle=(),
        job_summary=None,
        job_outputs=None,
    ):
        """lifecycle: the statuses a job shows, one per status read, before job_status (streaming waits it out).
        job_status: the status a job ends with, or job_status(job entity) -> that status, job by job.
        job_summary(job entity) -> the summary.json the trainer writes to the job's outputs/ (None: none written).
        job_outputs: a folder holding what the job's command wrote to its outputs/ (a real run of it), or
        job_outputs(job entity) -> {path under outputs/: text}; downloaded as Azure downloads the job's default
        artifacts.
        """
        self.lifecycle, self.job_summary, self.job_outputs = tuple(lifecycle), job_summary, job_outputs
        self.calls, self.failures, self.failures_after = [], {}, {}
        self.job_status, self.answer, self.auth_mode = job_status, answer, auth_mode
        self.computes, self.endpoints, self.deployments, self.jobs_by_name, self.models_by_name = {}, {}, {}, {}, {}
        self.environments = SimpleNamespace(create_or_update=self.op("environments.create_or_update", self._env))
        self.compute = SimpleNamespace(
            get=self.op("compute.get", self._compute_get),
            begin_create_or_update=self.op("compute.begin_create_or_update", self._compute),
        )
        self.jobs = SimpleNamespace(
            create_or_update=self.op("jobs.create_or_update", self._job),
            stream=self.op("jobs.stream", self._stream),
            get=self.op("jobs.get", self._job_get),
            download=self.op("jobs.download", self._job_download),
        )
        self.models = SimpleNamespace(
            create_or_update=self.op("models.create_or_update", self._model),
            list=self.op("models.list", self._model_list),
        )
        self.online_endpoints = SimpleNamespace(
            get=self.op("online_endpoints.get", self._endpoint_get),
            begin_create_or_update=self.op("online_endpoints.begin_create_or_update", self._endpoint),
            invoke=self.op("online_endpoints.invoke", self._invoke),
            get_keys=self.op("online_endpoints.get_keys", self._keys),
            begin_delete=self.op("online_endpoints.begin_delete", self._endpoint_delete),
        )
        self.online_deployments = SimpleNamespace(
            begin_create_or_update=self.op("online_deployments.begin_create_or_update", self._deployment),
            begin_delete=self.op("online_deployments.begin_delete", self._deployment_delete),
            get_logs=self.op("online_deployments.get_logs", lambda **kw: "log line"),
            list=self.op("online_deployments.list", self._deployment_list),
        )
        self.provisioning = "Succeeded"  # the state a deployment is in when its create call returns (or is cut off)

    def op(self, name, fn):
        def call(*args, **kwargs):
            self.calls.append((name, None))
            pending = self.failures.get(name)
            if pending:
                raise pending.pop(0)
            result = fn(*args, **kwargs)
            after = self.failures_after.get(name)
            if after:
                raise after.pop(0)
            return result

        return call

    def note(self, **details):  # what the last call carried
        self.calls[-1] = (self.calls[-1][0], details)

    def names(self):
        return [name for name, _ in self.calls]

    def details(self, name):
        return [d for n, d in self.calls if n == name]

    # each handler validates its entity with the SDK's own serializer before keeping it
    def _env(self, env):
        assert isinstance(env, Environment)
        self.note(entity=dump(env))
        env = copy.deepcopy(env)
        env._id = f"{WORKSPACE_ID}/environments/{env.name}/versions/{env.version}"
        return env

    def _compute_get(self, name):
        if name not in self.computes:
            raise ResourceNotFoundError(f"compute {name} not found")
        return self.computes[name]

    def _compute(self, compute):
        assert isinstance(compute, AmlCompute)
        self.note(entity=dump(compute))
        self.computes[compute.name] = compute
        return poller(compute)

    def _job(self, job):
        assert isinstance(job, Command)
        # as Azure: a job runs on a cluster that exists, or, naming none, on serverless compute, which needs the VM
        # size in resources.instance_type
        if job.compute:
            cluster = job.compute.split(":", 1)[-1]
            if cluster not in self.computes:
                raise http_error(400, f"compute {cluster} not found in the workspace")
        elif not (job.resources and getattr(job.resources, "instance_type", None)):
            raise http_error(400, "serverless compute needs resources.instance_type (a VM size)")
        if job.name in self.jobs_by_name and self.jobs_by_name[job.name].status not in ("Completed", "Failed"):
            raise http_error(409, f"job {job.name} already exists and is running")
        self.note(entity=dump(job), job=job)
        created = SimpleNamespace(
            name=job.name,
            studio_url=studio_url(job.name),
            status="Starting",
            id=f"{WORKSPACE_ID}/jobs/{job.name}",
            display_name=job.display_name,
            tags=dict(job.tags or {}),
            reads=0,
            entity=job,
        )
        self.jobs_by_name[job.name] = created
        return created

    def _stream(self, name):
        self.jobs_by_name[name].reads = len(self.lifecycle)  # streaming returns when the job has ended
        print(f"RunId: {name}\nWeb View: {studio_url(name)}")  # as azure-ai-ml prints while it streams
        if self._final(self.jobs_by_name[name]) == "Failed":
            error = json.dumps({"code": "UserError", "message": "CUDA out of memory"}, indent=4)
            raise JobException(message=f"Exception : \n {error} ", no_personal_data_message="failed job")

    def _job_get(self, name):
        if name not in self.jobs_by_name:
            raise ResourceNotFoundError(f"job {name} not found")
        job = self.jobs_by_name[name]
        job.status = self.lifecycle[job.reads] if job.reads < len(self.lifecycle) else self._final(job)
        job.reads += 1
        self.note(name=name, status=job.status)
        return job

    def _final(self, job):
        return self.job_status(job.entity) if callable(self.job_status) else self.job_status

    def _job_download(self, name, download_path=".", output_name=None, all=False):
        """As the SDK: only an ended job; its default artifacts (outputs/, logs) land in <download_path>/artifacts."""
        job = self.jobs_by_name[name]
        if job.status not in ("Completed", "Failed", "Canceled", "NotResponding"):
            raise JobException(
                message=f"This job is in state {job.status}. Download is allowed only in states "
                "['Completed', 'Failed', 'Canceled', 'NotResponding']",
                no_personal_data_message="x",
            )
        from pathlib import Path

        root = Path(download_path) / "artifacts"
        (root / "user_logs").mkdir(parents=True, exist_ok=True)
        (root / "user_logs" / "std_log.txt").write_text("training...\n")
        if callable(self.job_outputs):  # {path under outputs/: text} the job's command writes
            for rel, text in self.job_outputs(job.entity).items():
                (root / "outputs" / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / "outputs" / rel).write_text(text)
        elif self.job_outputs is not None:  # what a real run of the job's command wrote into its outputs/ folder
            shutil.copytree(self.job_outputs, root / "outputs", dirs_exist_ok=True)
        if self.job_summary is not None:
            (root / "outputs").mkdir(exist_ok=True)
            (root / "outputs" / "summary.json").write_text(json.dumps(self.job_summary(job.entity)))

    def _model(self, model):
        assert isinstance(model, Model)
        self.note(entity=dump(model))
        versions = self.models_by_name.setdefault(model.name, [])
        version = str(len(versions) + 1)
        registered = SimpleNamespace(
            name=model.name,
            version=version,
            tags=dict(model.tags or {}),
            id=f"{WORKSPACE_ID}/models/{model.name}/versions/{version}",
        )
        versions.append(registered)
        return registered

    def _model_list(self, name):
        if name not in self.models_by_name:
            raise ResourceNotFoundError(f"model {name} not found")
        return iter(self.models_by_name[name])

    def _endpoint_get(self, name):
        if name not in self.endpoints:
            raise ResourceNotFoundError(f"endpoint {name} not found")
        return copy.deepcopy(self.endpoints[name])

    def _endpoint(self, endpoint):
        assert isinstance(endpoint, ManagedOnlineEndpoint)
        self.note(entity=dump(endpoint), traffic=dict(endpoint.traffic or {}))
        missing = set(endpoint.traffic or {}) - set(self.deployments)
        assert not missing, f"traffic to deployments that do not exist: {missing}"
        stored = copy.deepcopy(endpoint)
        stored._scoring_uri = f"https://{endpoint.name}.{REGION}.inference.ml.azure.com/score"
        stored.auth_mode = self.auth_mode if endpoint.name not in self.endpoints else stored.auth_mode
        stored._id = f"{WORKSPACE_ID}/onlineEndpoints/{endpoint.name}"
        self.endpoints[endpoint.name] = stored
        return poller(stored)

    def _keys(self, name):
        if self.endpoints[name].auth_mode != "key":  # an aad_token endpoint has tokens, no keys
            return SimpleNamespace(access_token="eyJ0eXAi.not-a-real-token", expiry_time_utc=0)
        return SimpleNamespace(primary_key=KEY, secondary_key=KEY[::-1])

    def _endpoint_delete(self, name):
        self.endpoints.pop(name)
        self.deployments.clear()
        return poller()

    def _deployment(self, deployment):
        assert isinstance(deployment, ManagedOnlineDeployment)
        endpoint = self.endpoints[deployment.endpoint_name]
        self.note(
            entity=dump(deployment),
            deployment=deployment,
            traffic_share=(endpoint.traffic or {}).get(deployment.name, 0),
        )
        if deployment.instance_type not in ONLINE_SKUS:
            raise http_error(
                400,
                f"BadArgument: the VM size {deployment.instance_type} is not supported for managed online "
                "endpoints; see the managed online endpoints SKU list",
            )
        old = self.deployments.get(deployment.name)
        if old is not None and old.provisioning_state in BUSY:  # Azure: 409, another operation is in progress
            raise http_error(409, f"Conflict: deployment {deployment.name} is {old.provisioning_state}")
        deployment._provisioning_state = self.provisioning  # as the SDK sets it from the service's answer
        self.deployments[deployment.name] = deployment
        return poller(deployment)

    def _deployment_list(self, endpoint_name, local=False):
        return [d for d in self.deployments.values() if d.endpoint_name == endpoint_name]

    def _deployment_delete(self, name, endpoint_name):
        assert not (self.endpoints[endpoint_name].traffic or {}).get(name), "deleting a deployment that has traffic"
        self.note(name=name)
        if name not in self.deployments:
            raise ResourceNotFoundError(f"deployment {name} of {endpoint_name} not found")
        self.deployments.pop(name)
        return poller()

    def _invoke(self, endpoint_name, request_file, deployment_name):
        self.note(deployment_name=deployment_name, request=json.loads(open(request_file).read()))
        assert deployment_name in self.deployments
        return self.answer
