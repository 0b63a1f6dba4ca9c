"""deploy (Azure ML): a managed online endpoint, rolled out blue/green; chat reads its URL and key from Azure."""
import json

from ..errors import StageFailed
from . import prices, resources
from .client import LOG_LINES_ON_FAILURE, azure_errors, client, get_or_none, load, rel, summary
from .retry import call

ENDPOINT = "the Azure ML managed online endpoint"


@azure_errors
def run(spec, ctx) -> dict:
    """Blue/green: the new deployment gets traffic only after it answered a real request."""
    reg = ctx.upstream("register")
    ml, log = client(spec), ctx.log
    name = spec["deploy"]["endpoint_name"]
    endpoint = get_or_none("look up the endpoint", ml.online_endpoints.get, name, log)
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
        raise StageFailed(f"deployment {deployment.name} of {deployment.endpoint_name} failed: {summary(exc)}\n"
                          f"traffic is unchanged ({live or 'no deployment'} serves). The failed deployment still bills until "
                          f"removed: az ml online-deployment delete --name {deployment.name} --endpoint-name "
                          f"{deployment.endpoint_name} (stages=[teardown] would delete the whole endpoint, the live "
                          f"deployment too).\n"
                          f"last log lines:\n{deployment_logs(ml, deployment.name, deployment.endpoint_name)}") from exc


def deployment_logs(ml, name, endpoint_name) -> str:
    try:
        return ml.online_deployments.get_logs(name=name, endpoint_name=endpoint_name, lines=LOG_LINES_ON_FAILURE)
    except Exception as exc:  # the logs are a courtesy; the failure above is what matters
        return f"(could not read them: {summary(exc)})"


def smoke_test(ml, ctx, endpoint_name, deployment_name, live):
    """One real request to the new deployment, addressed by name, before it gets any traffic."""
    from azure.core.exceptions import AzureError
    request = resources.folder(ctx) / "sample-request.json"  # written by prepare_deploy
    try:
        raw = call("score a test request", ml.online_endpoints.invoke, endpoint_name=endpoint_name,
                   deployment_name=deployment_name, request_file=str(request), log=ctx.log)
        answers = _decode(raw)
    except (AzureError, ValueError) as exc:
        raise StageFailed(f"the new deployment {deployment_name} did not answer a test request ({summary(exc)}); "
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


@azure_errors
def endpoint_credentials(spec, ctx) -> tuple[str, str]:
    """(scoring URI, key), read from Azure at each call: the key is never stored by the runner."""
    ml, name = client(spec), spec["deploy"]["endpoint_name"]
    endpoint = get_or_none("look up the endpoint", ml.online_endpoints.get, name, ctx.log)
    if endpoint is None:
        raise StageFailed(f"endpoint {name} does not exist: python -m runner stages=[deploy] force=true creates it")
    keys = call("read the endpoint key", ml.online_endpoints.get_keys, name, log=ctx.log)
    return endpoint.scoring_uri, keys.primary_key


def is_current(outputs, spec, ctx) -> bool:
    return True  # Azure owns the endpoint's state; force=true redeploys


def plan(spec, ctx) -> list[str]:
    d = spec["deploy"]
    reg = ctx.manifest.outputs("register")
    model_ref = (f"azureml:{reg['model_name']}:{reg['model_version']}" if reg.get("model_version")
                 else f"azureml:{spec['register']['model_name']}@latest")  # the version register will add
    new = resources.next_deployment(ctx.manifest.outputs("deploy").get("deployment_name"))
    resources.prepare_deploy(spec, ctx, new, model_ref)
    return [
        f"{rel(ctx, 'endpoint.yml')}: endpoint {d['endpoint_name']} (key auth, user-assigned identity), "
        "created only if missing, never deleted here",
        f"{rel(ctx, 'deployment.yml')}: deployment {new} of {model_ref}, {d['instance_type']} x{d['instance_count']}: "
        f"{prices.hourly(d['instance_type'], d['instance_count'])}, billed every hour it exists until stages=[teardown]",
        f"rollout: {new} at 0% traffic -> one test request ({rel(ctx, 'sample-request.json')}) -> 100% traffic "
        "-> the previous deployment is deleted (both bill during the switch)",
    ]


