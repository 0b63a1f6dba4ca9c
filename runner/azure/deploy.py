"""deploy (Azure ML): a managed online endpoint, rolled out blue/green; chat reads its URL and key from Azure."""

from common import score_client
from common.score_client import ScoreError

from ..errors import StageFailed, UserError
from ..spec import estimates, hardware
from . import resources
from .client import LOG_LINES_ON_FAILURE, azure_errors, client, get_or_none, load, rel, summary
from .retry import call

ENDPOINT = "the Azure ML managed online endpoint"


@azure_errors
def run(spec, ctx) -> dict:
    """Blue/green: the new deployment gets traffic only after it answered a real request."""
    reg = ctx.upstream("register")
    ml, log = client(spec), ctx.log
    name = resources.endpoint_name(spec)
    endpoint = get_or_none("look up the endpoint", ml.online_endpoints.get, name, log)
    live = live_deployment(endpoint)
    if endpoint is not None:
        refuse_beside_a_busy_deployment(ml, name, log)
    new = resources.next_deployment(live)
    res = resources.prepare_deploy(spec, ctx, new, f"azureml:{reg['model_name']}:{reg['model_version']}")
    if endpoint is None:
        log(f"[deploy] creating endpoint {name}")
        call(
            "create the endpoint",
            lambda: ml.online_endpoints.begin_create_or_update(load(ctx, "endpoint.yml", res["endpoint.yml"])).result(),
            log=log,
        )
    log(
        f"[deploy] creating deployment {new} ({spec['deploy']['instance_type']} x{spec['deploy']['instance_count']}) "
        f"at 0% traffic; {'live: ' + live if live else 'no live deployment yet'}"
    )
    deployment = load(ctx, "deployment.yml", res["deployment.yml"])
    from azure.core.exceptions import AzureError, ClientAuthenticationError

    try:
        call(
            "create the deployment", lambda: ml.online_deployments.begin_create_or_update(deployment).result(), log=log
        )
        smoke_test(ml, ctx, name, new)
    except (StageFailed, AzureError) as exc:
        if isinstance(exc, ClientAuthenticationError):
            raise
        what = (
            str(exc)
            if isinstance(exc, StageFailed)
            else (
                f"deployment {new} of {name} failed: {summary(exc)}\nlast log lines:\n{deployment_logs(ml, new, name)}"
            )
        )
        raise StageFailed(f"{what}\n{remove_failed(ml, ctx, spec, name, new, live)}") from exc
    endpoint = call("read the endpoint", ml.online_endpoints.get, name, log=log)
    endpoint.traffic = {new: 100}
    call("move traffic", lambda: ml.online_endpoints.begin_create_or_update(endpoint).result(), log=log)
    log(f"[deploy] 100% of {name}'s traffic now goes to {new}")
    if live and live != new:
        call(
            "delete the old deployment",
            lambda: ml.online_deployments.begin_delete(name=live, endpoint_name=name).result(),
            log=log,
        )
        log(f"[deploy] deleted the previous deployment {live}")
    endpoint = call("read the endpoint", ml.online_endpoints.get, name, log=log)
    return {
        "kind": "azureml",
        "endpoint_name": name,
        "deployment_name": new,
        "scoring_uri": endpoint.scoring_uri,
        "model": f"{reg['model_name']}:{reg['model_version']}",
    }


def refuse_beside_a_busy_deployment(ml, name, log):
    """Two rollouts to one endpoint (from two machines, or one interrupted while Azure goes on) would race on the
    same deployment: while one is being created, updated or deleted, nothing is changed."""
    busy = [
        d
        for d in call("list the deployments", lambda: list(ml.online_deployments.list(endpoint_name=name)), log=log)
        if str(getattr(d, "provisioning_state", None) or "").lower() in ("creating", "updating", "deleting")
    ]
    if busy:
        d = busy[0]
        raise UserError(
            f"deployment {d.name} of endpoint {name} is {d.provisioning_state.lower()} (another rollout "
            f"to this endpoint, from here or elsewhere, or one that was interrupted, is still going on "
            f"in Azure); nothing was changed. Run again once `az ml online-deployment show --name "
            f"{d.name} --endpoint-name {name} --query provisioning_state` says Succeeded or Failed"
        )


def live_deployment(endpoint) -> str | None:
    """The deployment that takes most of the endpoint's traffic now, if any does."""
    traffic = {k: v for k, v in (getattr(endpoint, "traffic", None) or {}).items() if v}
    return max(traffic, key=traffic.get) if traffic else None


def remove_failed(ml, ctx, spec, endpoint_name, new, live) -> str:
    """Delete the new deployment that failed (never the live one): at 0 % traffic it would still bill."""
    d = spec["deploy"]
    cost = hardware.hourly(d["instance_type"], d["instance_count"])
    if new == live:  # cannot happen with blue/green names; never delete what serves
        return f"traffic is unchanged ({live} serves)."
    from azure.core.exceptions import ResourceNotFoundError

    try:
        call(
            "delete the failed deployment",
            lambda: ml.online_deployments.begin_delete(name=new, endpoint_name=endpoint_name).result(),
            log=ctx.log,
        )
    except ResourceNotFoundError:
        return f"traffic is unchanged ({live or 'no deployment'} serves); Azure created no deployment {new}, nothing bills."
    except Exception as exc:  # say so, and how to do it by hand
        return (
            f"traffic is unchanged ({live or 'no deployment'} serves). The failed deployment {new} could not be "
            f"deleted ({summary(exc)}) and bills {cost} until it is: az ml online-deployment delete --name {new} "
            f"--endpoint-name {endpoint_name}"
        )
    ctx.log(f"[deploy] deleted the failed deployment {new}: at 0% traffic it would still bill {cost}")
    return (
        f"traffic is unchanged ({live or 'no deployment'} serves); the failed deployment {new} was deleted so "
        f"it does not bill {cost} at 0% traffic."
    )


def deployment_logs(ml, name, endpoint_name) -> str:
    try:
        return ml.online_deployments.get_logs(name=name, endpoint_name=endpoint_name, lines=LOG_LINES_ON_FAILURE)
    except Exception as exc:  # the logs are a courtesy; the failure above is what matters
        return f"(could not read them: {summary(exc)})"


def smoke_test(ml, ctx, endpoint_name, deployment_name):
    """One real request to the new deployment, addressed by name, before it gets any traffic."""
    from azure.core.exceptions import AzureError

    request = resources.folder(ctx) / "sample-request.json"  # written by prepare_deploy
    try:
        # the deployment passed its readiness probe: a 5xx now is its own scoring script's answer
        raw = call(
            "score a test request",
            ml.online_endpoints.invoke,
            endpoint_name=endpoint_name,
            deployment_name=deployment_name,
            request_file=str(request),
            log=ctx.log,
        )
        answers = score_client.answers_of(raw)
    except (AzureError, ScoreError) as exc:
        raise StageFailed(
            f"the new deployment {deployment_name} did not answer a test request ({summary(exc)}).\n"
            f"last log lines:\n{deployment_logs(ml, deployment_name, endpoint_name)}"
        ) from exc
    ctx.log(f"[deploy] {deployment_name} answered the test request: {str(answers[0])[:80]!r}")


@azure_errors
def endpoint_credentials(spec, ctx) -> tuple[str, str]:
    """(scoring URI, key), read from Azure at each call: the key is never stored by the runner."""
    ml, name = client(spec), resources.endpoint_name(spec)
    endpoint = get_or_none("look up the endpoint", ml.online_endpoints.get, name, ctx.log)
    if endpoint is None:
        raise StageFailed(
            f"endpoint {name} does not exist: {ctx.again.command('deploy', extra=('force=true',))} creates it"
        )
    if str(getattr(endpoint, "auth_mode", "key")).lower() != "key":
        raise UserError(
            f"endpoint {name} uses auth_mode {endpoint.auth_mode}, but the chat flow sends a key: set "
            f"deploy.endpoint_name to a new name (this runner creates key-auth endpoints), or switch it "
            f"with az ml online-endpoint update --name {name} --set auth_mode=key"
        )
    keys = call("read the endpoint key", ml.online_endpoints.get_keys, name, log=ctx.log)
    if not getattr(keys, "primary_key", None):
        raise StageFailed(
            f"endpoint {name} returned no primary key; az ml online-endpoint get-credentials "
            f"--name {name} shows what it has"
        )
    return endpoint.scoring_uri, keys.primary_key


def running_lines(spec, outputs: dict) -> list[str]:
    """What the closing block says of a deployed endpoint: where it answers, what it bills, how to get its key
    (read from Azure by name; the workspace from the shell's environment, never printed)."""
    d, name = spec["deploy"], outputs.get("endpoint_name")
    return [
        f"endpoint:    {name} at {outputs.get('scoring_uri')} ({outputs.get('model')})",
        f"billing:     {d['instance_type']} x{d['instance_count']}, "
        f"{hardware.hourly(d['instance_type'], d['instance_count'])} until it is torn down",
        f"its key:     az ml online-endpoint get-credentials --name {name} "
        '--resource-group "$AZURE_RESOURCE_GROUP" --workspace-name "$AZURE_ML_WORKSPACE_NAME"',
    ]


def is_current(outputs, spec, ctx) -> bool:
    return True  # Azure owns the endpoint's state; force=true redeploys


def plan(spec, ctx) -> list[str]:
    d = spec["deploy"]
    reg = ctx.manifest.outputs("register")
    model_ref = (
        f"azureml:{reg['model_name']}:{reg['model_version']}"
        if reg.get("model_version")
        else f"azureml:{spec['register']['model_name']}@latest"
    )  # the version register will add
    new = resources.next_deployment(ctx.manifest.outputs("deploy").get("deployment_name"))
    resources.prepare_deploy(spec, ctx, new, model_ref)
    name = resources.endpoint_name(spec)
    if not d["endpoint_name"]:
        known = all(spec["azure"].get(k) for k in resources.WORKSPACE)
        name = (
            f"{name} (derived from run.name and the workspace"
            if known
            else f"{name.rsplit('-', 1)[0]}-<8 hex of the workspace> (derived from run.name and the AZURE_* workspace"
        )
        name += "; set deploy.endpoint_name to choose)"
    return [
        f"{rel(ctx, 'endpoint.yml')}: endpoint {name}, key auth, user-assigned identity; created only if missing, "
        "never deleted here",
        f"{rel(ctx, 'deployment.yml')}: deployment {new} of {model_ref}, {d['instance_type']} x{d['instance_count']}: "
        f"{hardware.hourly(d['instance_type'], d['instance_count'])}, billed every hour it exists until stages=[teardown]",
        *estimates.serving_lines(spec)[0],
        f"rollout: {new} at 0% traffic -> one test request ({rel(ctx, 'sample-request.json')}) -> 100% traffic "
        "-> the previous deployment is deleted (both bill during the switch); a new deployment that fails is deleted",
    ]
