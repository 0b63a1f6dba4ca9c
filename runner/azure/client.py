"""The Azure ML client, entity loading and error mapping shared by the backend's stage modules.

Each stage module writes its resources' YAML under <run_dir>/azure/ (resources.py), loads those same dicts with
azure-ai-ml's load_* functions and hands the entities to an MLClient. plan() writes the files only: it makes
no cloud call and imports nothing from azure. The endpoint key is fetched when needed and never written.
"""

import functools
import io

from ..errors import StageFailed, UserError
from ..redact import scrub
from ..spec import dump_yaml
from . import resources
from .retry import POLICY, call

LOGIN_HELP = [
    "could not get Azure credentials ({reason}). Log in first, one of:",
    "  az login                      (then re-run; add --use-device-code on a machine without a browser)",
    "  export AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET   (a service principal)",
]
LOG_LINES_ON_FAILURE = 50


# ---- the client and the entities ------------------------------------------------------------------

_clients: dict = {}  # one per workspace and process: a sweep's points and stages share it (tokens refresh themselves)


def client(spec):
    """An MLClient for spec.azure's workspace, with credentials checked the first time rather than mid-stage."""
    a = spec["azure"]
    key = tuple(a.get(k) for k in resources.WORKSPACE)
    if key in _clients:
        return _clients[key]
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import DefaultAzureCredential

    missing = [k for k in resources.WORKSPACE if not a.get(k)]
    if missing:
        raise UserError(f"azure.{', azure.'.join(missing)} not set: export the AZURE_* variables (README 'Azure ML')")
    credential = DefaultAzureCredential()
    try:
        credential.get_token("https://management.azure.com/.default")
    except ClientAuthenticationError as exc:
        raise UserError(login_help(exc)) from None
    _clients[key] = new_client(credential, key)
    return _clients[key]


def new_client(credential, workspace: tuple):
    """MLClient(credential, subscription, resource group, workspace) whose every request azure-core retries."""
    from azure.ai.ml import MLClient

    return MLClient(credential, *workspace, **POLICY)


LOADERS = {
    "environment.yml": "load_environment",
    "compute.yml": "load_compute",
    "job.yml": "load_job",
    "model.yml": "load_model",
    "endpoint.yml": "load_online_endpoint",
    "deployment.yml": "load_online_deployment",
}


def load(ctx, name: str, obj: dict):
    """The SDK entity of obj, loaded as `az ml ... create -f <run_dir>/azure/<name>` loads that file.

    obj is the dict the file was written from, with the AZURE_* values that the file shows as placeholders.
    """
    import azure.ai.ml

    loader = getattr(azure.ai.ml, LOADERS[name])
    return loader(io.StringIO(dump_yaml(obj)), relative_origin=str(resources.folder(ctx) / name))


def azure_errors(fn):
    """Login problems are the user's to fix (exit 2); any other Azure failure fails the stage (exit 1)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from azure.core.exceptions import AzureError, ClientAuthenticationError

        try:
            return fn(*args, **kwargs)
        except ClientAuthenticationError as exc:
            raise UserError(login_help(exc)) from None
        except AzureError as exc:  # MlException is one too
            raise StageFailed(f"Azure ML: {summary(exc)}") from exc

    return wrapper


def get_or_none(what, get, name, log):
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return call(what, get, name, log=log)
    except ResourceNotFoundError:
        return None


def rel(ctx, name) -> str:
    """A resource file's path as the plan shows it, relative to the run directory."""
    return str((resources.folder(ctx) / name).relative_to(ctx.run_dir))


def summary(exc) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())  # the SDK indents JSON errors
    return scrub(text[:500]) if text else type(exc).__name__


def login_help(exc) -> list[str]:
    reason = summary(exc).split(". ")[0][:200]
    return [LOGIN_HELP[0].format(reason=reason), *LOGIN_HELP[1:]]
