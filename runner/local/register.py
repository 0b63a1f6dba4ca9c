"""register (local): add the train stage's model to the MLflow Model Registry of the same tracking store."""

from pathlib import Path


def run(spec, ctx):
    train = ctx.upstream("train")
    name = spec["register"]["model_name"]
    import mlflow

    from trainer.tracking import point_at

    # the registry lives in the store the model was logged to, whatever MLFLOW_TRACKING_URI says now
    point_at(train["tracking_uri"], registry=True)
    version = mlflow.register_model(train["model_uri"], name, tags={"run_dir": str(ctx.run_dir)})
    ctx.log(f"[register] {name} version {version.version} <- {train['model_uri']} in {train['tracking_uri']}")
    return {
        "model_name": name,
        "model_version": str(version.version),
        "model_uri": f"models:/{name}/{version.version}",
        "tracking_uri": train["tracking_uri"],
        "source_model_uri": train["model_uri"],
        "mlflow_model_dir": train.get("mlflow_model_dir"),
    }


def is_current(outputs, spec, ctx) -> bool:
    uri = outputs["tracking_uri"]
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        return False  # asking would create an empty store
    from mlflow import MlflowClient

    try:  # the store may have been replaced since
        MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(
            outputs["model_name"], outputs["model_version"]
        )
    except Exception:
        return False
    return True


def plan(spec, ctx):
    return [f"registry: a new version of {spec['register']['model_name']} in the train stage's MLflow store"]
