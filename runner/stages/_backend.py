"""Which backend a stage uses: this machine, or Azure ML (imported only when the compute is Azure)."""


def is_azure(spec) -> bool:
    return spec["compute"]["kind"] == "azureml"


def azure():
    from ..azure import backend
    return backend
