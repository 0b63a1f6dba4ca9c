"""teardown (Azure ML): delete the endpoint and its deployments, and the run's Prompt flow connection. Safe to
repeat; the cluster scales to 0 alone."""

from ..spec import hardware
from ..stages import prompt_flow
from . import resources
from .client import azure_errors, client, get_or_none
from .retry import call


@azure_errors
def run(spec, ctx) -> dict:
    """Delete the endpoint and its deployments if they exist; safe to repeat. The cluster scales to 0 alone."""
    from azure.core.exceptions import ResourceNotFoundError

    ml, name = client(spec), resources.endpoint_name(spec)
    deleted = None
    if get_or_none("look up the endpoint", ml.online_endpoints.get, name, ctx.log) is not None:
        try:
            call("delete the endpoint", lambda: ml.online_endpoints.begin_delete(name=name).result(), log=ctx.log)
            deleted = name
        except ResourceNotFoundError:
            pass  # deleted meanwhile
    ctx.log(f"[teardown] deleted endpoint {name}" if deleted else f"[teardown] no endpoint {name}: nothing to delete")
    ctx.manifest.mark_stopped("deploy")  # so the next deploy creates it again
    prompt_flow.delete_connection(ctx)
    return {"deleted": deleted}


def plan(spec, ctx) -> list[str]:
    d = spec["deploy"]
    return [
        f"would delete endpoint {resources.endpoint_name(spec)} and its deployments if it exists, ending their bill "
        f"({d['instance_type']} x{d['instance_count']}: {hardware.hourly(d['instance_type'], d['instance_count'])}); "
        + (
            "serverless training left no cluster behind"
            if spec["compute"]["cluster_name"] is None
            else "the compute cluster stays (it scales to 0 nodes when idle)"
        )
        + "; deletes the run's Prompt flow connection if its chat stage wrote one"
    ]
