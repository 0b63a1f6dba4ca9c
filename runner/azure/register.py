"""register (Azure ML): the train job's MLflow model output as a new version of a workspace model."""

from . import resources
from .client import azure_errors, client, load, rel
from .retry import call, call_once


@azure_errors
def run(spec, ctx) -> dict:
    train_out = ctx.upstream("train")
    job = train_out["job_name"]
    res = resources.prepare_register(spec, ctx, train_out["model_path"], job)
    ml, name = client(spec), res["model.yml"]["name"]
    # a retried create would add a second version: after a failed try, look for the version of this job first
    model = call_once(
        "register the model",
        ml.models.create_or_update,
        load(ctx, "model.yml", res["model.yml"]),
        check=lambda: version_from(ml, name, job, ctx.log),
        log=ctx.log,
    )
    ctx.log(f"[register] {model.name} version {model.version} <- {train_out['model_path']}")
    # name and version, not the model's ARM id, which holds the subscription id
    return {"model_name": model.name, "model_version": str(model.version), "job_name": job}


def version_from(ml, name: str, job: str, log):
    """The version of model `name` registered from this job, if there is one."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        versions = call("list the model's versions", lambda: list(ml.models.list(name=name)), log=log)
    except ResourceNotFoundError:
        return None
    return next((m for m in versions if (m.tags or {}).get(resources.JOB_TAG) == job), None)


def is_current(outputs, spec, ctx) -> bool:
    return bool(outputs.get("model_version"))


def plan(spec, ctx) -> list[str]:
    train = ctx.manifest.outputs("train")
    job = train.get("job_name") or resources.JOB_NAME_PLACEHOLDER
    path = train.get("model_path") or resources.model_path(job)
    res = resources.prepare_register(spec, ctx, path, job)
    return [
        f"{rel(ctx, 'model.yml')}: a new version of mlflow_model {res['model.yml']['name']} from {path}; "
        "storage only, no hourly cost"
    ]
