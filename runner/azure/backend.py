"""Azure ML backend of the train, register, deploy, chat and teardown stages (compute.kind: azureml).

Each function writes its resources' YAML under <run_dir>/azure/ (resources.py), loads those same dicts with
azure-ai-ml's load_* functions and hands the entities to an MLClient. plan() writes the files only: it makes
no cloud call and imports nothing from azure. The endpoint key is fetched when needed and never written.
"""
import functools
import io
import json
import re
import secrets
from pathlib import Path

from ..errors import StageFailed, UserError
from . import prices, resources
from .retry import call

LOGIN_HELP = ["could not get Azure credentials ({reason}). Log in first, one of:",
              "  az login                      (then re-run; add --use-device-code on a machine without a browser)",
              "  export AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET   (a service principal)"]
LOG_LINES_ON_FAILURE = 50


# ---- the client and the entities ------------------------------------------------------------------

def client(spec):
    """An MLClient for spec.azure's workspace, with credentials checked now rather than mid-stage."""
    from azure.ai.ml import MLClient
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import DefaultAzureCredential

    a = spec["azure"]
    missing = [k for k in ("subscription_id", "resource_group", "workspace_name") if not a.get(k)]
    if missing:
        raise UserError(f"azure.{', azure.'.join(missing)} not set: export the AZURE_* variables (README 'Azure')")
    credential = DefaultAzureCredential()
    try:
        credential.get_token("https://management.azure.com/.default")
    except ClientAuthenticationError as exc:
        raise UserError(_login_help(exc)) from None
    return MLClient(credential, a["subscription_id"], a["resource_group"], a["workspace_name"])


LOADERS = {"environment.yml": "load_environment", "compute.yml": "load_compute", "job.yml": "load_job",
           "model.yml": "load_model", "endpoint.yml": "load_online_endpoint",
           "deployment.yml": "load_online_deployment"}


def load(ctx, name: str, obj: dict):
    """The SDK entity of obj, loaded as `az ml ... create -f <run_dir>/azure/<name>` loads that file.

    obj is the dict the file was written from, with the AZURE_* values that the file shows as placeholders.
    """
    import azure.ai.ml

    loader = getattr(azure.ai.ml, LOADERS[name])
    return loader(io.StringIO(resources.to_yaml(obj)), relative_origin=str(resources.folder(ctx) / name))


def _azure_errors(fn):
    """Login problems are the user's to fix (exit 2); any other Azure failure fails the stage (exit 1)."""
    @functools.wraps(fn)
    def wrapper(spec, ctx, *args, **kwargs):
        from azure.core.exceptions import AzureError, ClientAuthenticationError
        try:
            return fn(spec, ctx, *args, **kwargs)
        except ClientAuthenticationError as exc:
            raise UserError(_login_help(exc)) from None
        except AzureError as exc:  # MlException is one too
            raise StageFailed(f"Azure ML: {_summary(exc)}") from exc
    return wrapper


def _get_or_none(what, get, name, log):
    from azure.core.exceptions import ResourceNotFoundError
    try:
        return call(what, get, name, log=log)
    except ResourceNotFoundError:
        return None


# ---- train ------------------------------------------------------------------------------------------

@_azure_errors
def train(spec, ctx) -> dict:
    data = ctx.upstream("data")
    job_name = new_job_name(spec)  # chosen here so a retried submit cannot start a second job
    res = resources.prepare_train(spec, ctx, data, job_name=job_name)
    ml, log = client(spec), ctx.log
    env = call("create the environment", ml.environments.create_or_update,
               load(ctx, "environment.yml", res["environment.yml"]), log=log)
    log(f"[train] environment {env.name}:{env.version} ({spec['compute']['image']})")
    ensure_compute(ml, ctx, load(ctx, "compute.yml", res["compute.yml"]))
    job = call("submit the job", ml.jobs.create_or_update, load(ctx, "job.yml", res["job.yml"]), log=log)
    log(f"[train] job {job.name} submitted; follow it at {job.studio_url}")
    streamed_error = follow(ml, job, log)
    final = call("read the job's status", ml.jobs.get, job.name, log=log)
    studio = final.studio_url or job.studio_url
    if final.status != "Completed":
        detail = f"\n{_summary(streamed_error)}" if streamed_error else ""
        raise StageFailed(f"Azure ML job {job.name} ended with status {final.status}; see {studio}{detail}")
    return {"job_name": job.name, "status": final.status, "studio_url": studio,
            "model_path": resources.model_path(job.name), "environment": f"{env.name}:{env.version}",
            "compute": spec["compute"]["cluster_name"], "experiment": spec["compute"]["experiment_name"]}


def new_job_name(spec) -> str:
    base = re.sub(r"[^a-zA-Z0-9_-]", "-", f"{spec['run']['name']}-{spec['model']['name']}")
    return f"{base[:40]}-{secrets.token_hex(4)}"


def ensure_compute(ml, ctx, wanted):
    """Reuse the cluster when it exists (its settings are left alone), else create it."""
    existing = _get_or_none("look up the compute cluster", ml.compute.get, wanted.name, ctx.log)
    if existing is None:
        ctx.log(f"[train] creating compute cluster {wanted.name} ({wanted.size}, "
                f"{wanted.min_instances}..{wanted.max_instances} nodes)")
        call("create the compute cluster", lambda: ml.compute.begin_create_or_update(wanted).result(), log=ctx.log)
    elif str(getattr(existing, "size", "")).lower() != wanted.size.lower():
        ctx.warn(f"compute cluster {wanted.name} exists with size {existing.size}, not {wanted.size}; "
                 "the job runs on it as it is (rename compute.cluster_name to get a new one)")


def follow(ml, job, log):
    """Stream the job's logs until it ends. Returns the error streaming raised (a failed job raises one)."""
    from azure.ai.ml.exceptions import MlException
    try:
        call("stream the job's logs", ml.jobs.stream, job.name, log=log)
    except MlException as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):
            log(f"[train] job {job.name} keeps running on Azure; stop it with: az ml job cancel -n {job.name}")
            raise KeyboardInterrupt from None
        return exc
    return None


# ---- register ---------------------------------------------------------------------------------------

@_azure_errors
def register(spec, ctx) -> dict:
    train_out = ctx.upstream("train")
    res = resources.prepare_register(spec, ctx, train_out["model_path"])
    ml = client(spec)
    model = call("register the model", ml.models.create_or_update, load(ctx, "model.yml", res["model.yml"]),
                 log=ctx.log)
    ctx.log(f"[register] {model.name} version {model.version} <- {train_out['model_path']}")
    return {"model_name": model.name, "model_version": str(model.version), "model_id": model.id}


# ---- deploy -----------------------------------------------------------------------------------------

@_azure_errors
def deploy(spec, ctx) -> dict:
    """Blue/green: the new deployment gets traffic only after it answered a real request."""
    reg = ctx.upstream("register")
    ml, log = client(spec), ctx.log
    name = spec["deploy"]["endpoint_name"]
    endpoint = _get_or_none("look up the endpoint", ml.online_endpoints.get, name, log)
    live = live_deployment(endpoint)
    new = resources.next_deployment(live)
    res = resources.prepare_deploy(spec, ctx, new, f"azureml:{reg['model_name']}:{reg['model_version']}")
    if endpoint is None:
        log(f"[deploy] creating endpoint {name}")
        call("create the endpoint",
             lambda: ml.online_endpoints.begin_create_or_update(load(ctx, "endpoint.yml", res["endpoint.yml"])).result(),
             log=log)
    log(f"[deploy] creating deployment {new} ({spec['deploy']['instance_type']} x{spec['deploy']['instance_count']}) "
        f"at 0% traffic; {'live: ' + live if live else 'no live deployment yet'}")
    create_deployment(ml, ctx, load(ctx, "deployment.yml", res["deployment.yml"]), live)
    smoke_test(ml, ctx, name, new, live)
    endpoint = call("read the endpoint", ml.online_endpoints.get, name, log=log)
    endpoint.traffic = {new: 100}
    call("move traffic", lambda: ml.online_endpoints.begin_create_or_update(endpoint).result(), log=log)
    log(f"[deploy] 100% of {name}'s traffic now goes to {new}")
    if live and live != new:
        call("delete the old deployment",
             lambda: ml.online_deployments.begin_delete(name=live, endpoint_name=name).result(), log=log)
        log(f"[deploy] deleted the previous deployment {live}")
    endpoint = call("read the endpoint", ml.online_endpoints.get, name, log=log)
    return {"kind": "azureml", "endpoint_name": name, "deployment_name": new,
            "scoring_uri": endpoint.scoring_uri, "model_id": reg.get("model_id")}


def live_deployment(endpoint) -> str | None:
    """The deployment that takes most of the endpoint's traffic now, if any does."""
    traffic = {k: v for k, v in (getattr(endpoint, "traffic", None) or {}).items() if v}
    return max(traffic, key=traffic.get) if traffic else None


def create_deployment(ml, ctx, deployment, live):
    from azure.core.exceptions import AzureError
    try:
        call("create the deployment", lambda: ml.online_deployments.begin_create_or_update(deployment).result(),
             log=ctx.log)
    except AzureError as exc:
        raise StageFailed(f"deployment {deployment.name} of {deployment.endpoint_name} failed: {_summary(exc)}\n"
                          f"traffic is unchanged ({live or 'no deployment'} serves). The failed deployment still bills until "
                          f"removed: az ml online-deployment delete --name {deployment.name} --endpoint-name "
                          f"{deployment.endpoint_name} (stages=[teardown] would delete the whole endpoint, the live "
                          f"deployment too).\n"
                          f"last log lines:\n{deployment_logs(ml, deployment.name, deployment.endpoint_name)}") from exc


def deployment_logs(ml, name, endpoint_name) -> str:
    try:
        return ml.online_deployments.get_logs(name=name, endpoint_name=endpoint_name, lines=LOG_LINES_ON_FAILURE)
    except Exception as exc:  # the logs are a courtesy; the failure above is what matters
        return f"(could not read them: {_summary(exc)})"


def smoke_test(ml, ctx, endpoint_name, deployment_name, live):
    """One real request to the new deployment, addressed by name, before it gets any traffic."""
    from azure.core.exceptions import AzureError
    request = resources.folder(ctx) / "sample-request.json"  # written by prepare_deploy
    try:
        raw = call("score a test request", ml.online_endpoints.invoke, endpoint_name=endpoint_name,
                   deployment_name=deployment_name, request_file=str(request), log=ctx.log)
        answers = _decode(raw)
    except (AzureError, ValueError) as exc:
        raise StageFailed(f"the new deployment {deployment_name} did not answer a test request ({_summary(exc)}); "
                          f"traffic is unchanged ({live or 'no deployment'} serves).\nlast log lines:\n"
                          f"{deployment_logs(ml, deployment_name, endpoint_name)}") from exc
    ctx.log(f"[deploy] {deployment_name} answered the test request: {str(answers[0])[:80]!r}")


def _decode(raw) -> list:
    answers = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
    if isinstance(answers, str):  # some servers JSON-encode the script's JSON once more
        answers = json.loads(answers)
    if not isinstance(answers, list) or not answers:
        raise ValueError(f"expected a non-empty list of answers, got {str(raw)[:200]}")
    return answers


# ---- chat and teardown ------------------------------------------------------------------------------

@_azure_errors
def endpoint_credentials(spec, ctx) -> tuple[str, str]:
    """(scoring URI, key), read from Azure at each call: the key is never stored by the runner."""
    ml, name = client(spec), spec["deploy"]["endpoint_name"]
    endpoint = _get_or_none("look up the endpoint", ml.online_endpoints.get, name, ctx.log)
    if endpoint is None:
        raise StageFailed(f"endpoint {name} does not exist: python -m runner stages=[deploy] force=true creates it")
    keys = call("read the endpoint key", ml.online_endpoints.get_keys, name, log=ctx.log)
    return endpoint.scoring_uri, keys.primary_key


@_azure_errors
def teardown(spec, ctx) -> dict:
    """Delete the endpoint and its deployments if they exist; safe to repeat. The cluster scales to 0 alone."""
    from azure.core.exceptions import ResourceNotFoundError
    ml, name = client(spec), spec["deploy"]["endpoint_name"]
    deleted = None
    if _get_or_none("look up the endpoint", ml.online_endpoints.get, name, ctx.log) is not None:
        try:
            call("delete the endpoint", lambda: ml.online_endpoints.begin_delete(name=name).result(), log=ctx.log)
            deleted = name
        except ResourceNotFoundError:
            pass  # deleted meanwhile
    ctx.log(f"[teardown] deleted endpoint {name}" if deleted else f"[teardown] no endpoint {name}: nothing to delete")
    entry = ctx.manifest.entry("deploy")
    if entry and entry.get("status") != "stopped":  # so the next deploy creates it again
        ctx.manifest.record("deploy", "stopped", entry.get("inputs_hash"))
    return {"deleted": deleted}


# ---- plan -------------------------------------------------------------------------------------------

def plan(stage_name, spec, ctx) -> list[str]:
    """Write the YAML of what the stage would create; return lines saying so and what it costs. No cloud call."""
    planner = {"train": _plan_train, "register": _plan_register, "deploy": _plan_deploy,
               "teardown": _plan_teardown}.get(stage_name)
    return planner(spec, ctx) if planner else []


def _rel(ctx, name) -> str:
    return str((resources.folder(ctx) / name).relative_to(ctx.run_dir))


def _plan_train(spec, ctx) -> list[str]:
    c = spec["compute"]
    data = ctx.manifest.outputs("data")
    if not data.get("train_file"):  # not run yet: where the data stage will write
        data = {"train_file": Path(ctx.run_dir) / "data" / "train.jsonl",
                "test_file": Path(ctx.run_dir) / "data" / "test.jsonl"}
    res = resources.prepare_train(spec, ctx, data)
    env, job = res["environment.yml"], res["job.yml"]
    return [
        f"{_rel(ctx, 'environment.yml')}: environment {env['name']}:{env['version']} = {env['image']} "
        f"+ {_rel(ctx, 'conda-train.yml')} (trainer/requirements.txt)",
        f"{_rel(ctx, 'compute.yml')}: cluster {c['cluster_name']}, {c['instance_type']}, "
        f"{c['min_instances']}..{c['max_instances']} {c['tier']} nodes in {c['location']}: billed per node-hour while "
        f"a node runs, {prices.hourly(c['instance_type'])} per node; "
        f"scales to {c['min_instances']} after {c['idle_time_before_scale_down']} s idle",
        f"{_rel(ctx, 'job.yml')}: command job in experiment {c['experiment_name']}, "
        f"{c['instance_count']} node(s) x {c['processes_per_instance']} process(es), code {_rel(ctx, 'code')}, "
        f"inputs {job['inputs']['train_file']['path']}, {job['inputs']['eval_file']['path']}",
        f"by hand: az ml job create -f {resources.folder(ctx) / 'job.yml'} (after creating the environment and compute)",
    ]


def _plan_register(spec, ctx) -> list[str]:
    path = ctx.manifest.outputs("train").get("model_path") or resources.model_path(resources.JOB_NAME_PLACEHOLDER)
    res = resources.prepare_register(spec, ctx, path)
    return [f"{_rel(ctx, 'model.yml')}: a new version of mlflow_model {res['model.yml']['name']} from {path}; "
            "storage only, no hourly cost"]


def _plan_deploy(spec, ctx) -> list[str]:
    d = spec["deploy"]
    reg = ctx.manifest.outputs("register")
    model_ref = (f"azureml:{reg['model_name']}:{reg['model_version']}" if reg.get("model_version")
                 else f"azureml:{spec['register']['model_name']}@latest")  # the version register will add
    new = resources.next_deployment(ctx.manifest.outputs("deploy").get("deployment_name"))
    resources.prepare_deploy(spec, ctx, new, model_ref)
    return [
        f"{_rel(ctx, 'endpoint.yml')}: endpoint {d['endpoint_name']} (key auth, user-assigned identity), "
        "created only if missing, never deleted here",
        f"{_rel(ctx, 'deployment.yml')}: deployment {new} of {model_ref}, {d['instance_type']} x{d['instance_count']}: "
        f"{prices.hourly(d['instance_type'], d['instance_count'])}, billed every hour it exists until stages=[teardown]",
        f"rollout: {new} at 0% traffic -> one test request ({_rel(ctx, 'sample-request.json')}) -> 100% traffic "
        "-> the previous deployment is deleted (both bill during the switch)",
    ]


def _plan_teardown(spec, ctx) -> list[str]:
    d = spec["deploy"]
    return [f"would delete endpoint {d['endpoint_name']} and its deployments if it exists, ending their bill "
            f"({d['instance_type']} x{d['instance_count']}: {prices.hourly(d['instance_type'], d['instance_count'])}); "
            "the compute cluster stays (it scales to 0 nodes when idle)"]


# ---- messages ---------------------------------------------------------------------------------------

def _summary(exc) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())  # the SDK indents JSON errors
    return text[:500] if text else type(exc).__name__


def _login_help(exc) -> list[str]:
    reason = _summary(exc).split(". ")[0][:200]
    return [LOGIN_HELP[0].format(reason=reason), *LOGIN_HELP[1:]]
