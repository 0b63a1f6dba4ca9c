"""register (Azure ML): the train job's MLflow model output as a new version of a workspace model."""
from . import resources
from .client import azure_errors, client, load, rel
from .retry import call


@azure_errors
def run(spec, ctx) -> dict:
    train_out = ctx.upstream("train")
    res = resources.prepare_register(spec, ctx, train_out["model_path"])
    ml = client(spec)
    model = call("register the model", ml.models.create_or_update, load(ctx, "model.yml", res["model.yml"]),
                 log=ctx.log)
    ctx.log(f"[register] {model.name} version {model.version} <- {train_out['model_path']}")
    return {"model_name": model.name, "model_version": str(model.version), "model_id": model.id}


def is_current(outputs, spec, ctx) -> bool:
    return bool(outputs.get("model_version"))


def plan(spec, ctx) -> list[str]:
    path = ctx.manifest.outputs("train").get("model_path") or resources.model_path(resources.JOB_NAME_PLACEHOLDER)
    res = resources.prepare_register(spec, ctx, path)
    return [f"{rel(ctx, 'model.yml')}: a new version of mlflow_model {res['model.yml']['name']} from {path}; "
            "storage only, no hourly cost"]


