"""Every Azure resource a stage creates, as a plain dict, written as YAML under <run_dir>/azure/.

The one source of truth: plan mode writes these files and stops; a real run writes the same files and then
loads the same dicts with azure-ai-ml (the stage modules, through client.load). Each file also works with `az ml <thing> create -f`.
Values that come from AZURE_* environment variables are shown as "<from $VAR>" in the files, as in
spec.yaml, so a run directory can be shared: each prepare_* function builds its dicts twice, from the
redacted spec for the files and from the real spec for the SDK.

No azure import here: plan mode must stay fast and work offline.
"""

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import yaml

from common import score_client
from common.files import write_atomic

from .. import REPO_ROOT
from ..errors import StageFailed
from ..redact import redacted
from ..spec import azure_env_paths, digest, dump_yaml, hardware
from . import environments

JOB_CODE, DEPLOYMENT_CODE = "job-code", "deployment-code"  # beside job.yml and deployment.yml, holding:
PACKAGES = {JOB_CODE: ("trainer", "common"), DEPLOYMENT_CODE: ("serving", "common")}
# Azure ML's documented CPU inference base image (docs: "Prebuilt Docker images for inference"); the conda file
# adds Python 3.11 and the pins. "minimal-ubuntu22.04-py311-cpu-inference" was only ever a folder name in
# azureml-assets, never a published image: deployments on it fail with ImageBuildFailure.
INFERENCE_IMAGE = "mcr.microsoft.com/azureml/minimal-ubuntu22.04-py39-cpu-inference:latest"
# its GPU sibling in the same table, for a deploy.instance_type with GPUs (e.g. Standard_NC4as_T4_v3): the conda
# file brings PyTorch's CUDA build with its own CUDA libraries, so only the node's driver matters
GPU_INFERENCE_IMAGE = "mcr.microsoft.com/azureml/minimal-ubuntu22.04-py39-cuda11.8-gpu-inference:latest"


def serves_on_gpu(spec) -> bool:
    return hardware.gpu(spec["deploy"]["instance_type"]) is not None


TEMPLATE_FILE = "chat_template.jinja"  # model.chat_template's copy in the staged code folder
SCORING_SCRIPT = "serving/scoring.py"  # relative to the staged code folder
DEPLOYMENT_NAMES = ("blue", "green")  # alternate, so the live one is never replaced in place
MODEL_OUTPUT = "model_output"
CHECKPOINT_OUTPUT = "checkpoints"  # a separate job output: never part of the registered model
MODEL_SUBDIR = "mlflow_model"  # the trainer writes <output-dir>/mlflow_model/MLmodel
JOB_NAME_PLACEHOLDER = "<job-name-from-train>"
WORKSPACE = ("subscription_id", "resource_group", "workspace_name")  # the spec.azure keys naming the workspace
JOB_TAG = "job_name"  # on each model version: the job that trained it
SMOKE_TOKENS = 8  # the deploy stage's test request asks for this many

SCHEMA = "https://azuremlschemas.azureedge.net/latest/{}.schema.json"


def folder(ctx) -> Path:
    return Path(ctx.run_dir) / "azure"


def model_path(job_name: str) -> str:
    return f"azureml://jobs/{job_name}/outputs/{MODEL_OUTPUT}/paths/{MODEL_SUBDIR}"


def train_conda(spec) -> dict:
    return environments.conda(environments.train_pip(spec["compute"]["device"]))


# ---- train ----------------------------------------------------------------------------------------


def environment(spec) -> dict:
    c = spec["compute"]
    # the version is a hash of what defines the image: re-running reuses it, a changed pin makes a new one
    version = digest({"image": c["image"], "conda": train_conda(spec)})
    return {
        "$schema": SCHEMA.format("environment"),
        "name": c["environment_name"],
        "version": version,
        "image": c["image"],
        "conda_file": "conda-train.yml",
        "description": "python -m trainer: trainer/requirements.txt with the job's torch build and MLflow pair",
    }


def serverless(spec) -> bool:
    """compute.cluster_name=null: Azure ML serverless compute, no cluster (the job names its VM size)."""
    return spec["compute"]["cluster_name"] is None


def compute(spec) -> dict:
    c = spec["compute"]
    # no location: the cluster is made in the workspace's region unless compute.location names another
    return {
        "$schema": SCHEMA.format("amlCompute"),
        "name": c["cluster_name"],
        "type": "amlcompute",
        "size": c["instance_type"],
        **({"location": c["location"]} if c["location"] else {}),
        "tier": c["tier"],
        "min_instances": c["min_instances"],
        "max_instances": c["max_instances"],
        "idle_time_before_scale_down": c["idle_time_before_scale_down"],
    }


def job(spec, env: dict, train_file: str, eval_file: str, point: str = "") -> dict:
    """point: a sweep point's name (data.percent=2): in the display name and tags, to tell the jobs apart."""
    c = spec["compute"]
    return {
        "$schema": SCHEMA.format("commandJob"),
        "type": "command",
        "display_name": f"{spec['run']['name']}-{spec['model']['name']}" + (f" {point}" if point else ""),
        "experiment_name": spec["run"]["experiment_name"],
        "code": JOB_CODE,  # trainer/, common/ and the run's spec.yaml, staged next to this file
        # the model is saved into model_output (registered as it is: Azure's tracking server has no logged-model
        # API); checkpoints go to their own output, so a re-run of an interrupted job resumes from them, and are
        # deleted once the model is saved (a 3.8B full fine-tune keeps two of about 45 GB with optimizer state)
        "command": (
            "python -m trainer --spec spec.yaml --train-file ${{inputs.train_file}} "
            "--eval-file ${{inputs.eval_file}} --output-dir ${{outputs.%s}} "
            "--checkpoint-dir ${{outputs.%s}} --save-model-only --delete-checkpoints-when-done "
            "--summary-file outputs/summary.json --eval-dir outputs/eval" % (MODEL_OUTPUT, CHECKPOINT_OUTPUT)
        ),
        "environment": f"azureml:{env['name']}:{env['version']}",
        # serverless (no cluster named): Azure starts resources.instance_type nodes for this job alone
        **({} if serverless(spec) else {"compute": f"azureml:{c['cluster_name']}"}),
        "inputs": {
            "train_file": {"type": "uri_file", "path": train_file},  # local files: the SDK uploads them
            "eval_file": {"type": "uri_file", "path": eval_file},
        },
        "outputs": {
            MODEL_OUTPUT: {"type": "uri_folder"},
            CHECKPOINT_OUTPUT: {"type": "uri_folder", "mode": "rw_mount"},
        },
        # Azure starts processes_per_instance copies per node with torch.distributed's variables set
        "distribution": {"type": "pytorch", "process_count_per_instance": hardware.processes_per_instance(c)},
        "resources": {
            "instance_count": c["instance_count"],
            **({"instance_type": c["instance_type"]} if serverless(spec) else {}),
        },
        "limits": {"timeout": int(c["max_hours"] * 3600)},  # seconds; bounds what the job can cost
        "tags": {
            "run": spec["run"]["name"],
            "model": str(spec["model"]["id"] or spec["model"]["name"]),
            **({"sweep_point": point} if point else {}),
        },
    }


# ---- register -------------------------------------------------------------------------------------


def model(spec, path: str, job_name: str) -> dict:
    return {
        "$schema": SCHEMA.format("model"),
        "name": spec["register"]["model_name"],
        "type": "mlflow_model",
        "path": path,
        "description": "fine-tuned by the runner's train stage",
        "tags": {JOB_TAG: job_name},
    }


# ---- deploy ---------------------------------------------------------------------------------------


def endpoint_name(spec) -> str:
    """deploy.endpoint_name, or one derived from run.name and the workspace: names must be unique in the region.

    Stable for a run in a workspace (re-runs find their endpoint); 8 hex characters of a hash of the workspace's
    ids make it unlikely to collide with anyone else's, and reveal none of them.
    """
    if spec["deploy"]["endpoint_name"]:
        return spec["deploy"]["endpoint_name"]
    a = spec["azure"]
    workspace = "/".join(str(a.get(k) or "") for k in WORKSPACE)
    run = re.sub(r"[^a-z0-9-]+", "-", spec["run"]["name"].lower()).strip("-")
    base = f"phi3-{run}"[:23].rstrip("-")
    return f"{base}-{hashlib.sha256(workspace.encode()).hexdigest()[:8]}"


def endpoint(spec, name: str) -> dict:
    return {
        "$schema": SCHEMA.format("managedOnlineEndpoint"),
        "name": name,
        "auth_mode": "key",
        "identity": {
            "type": "user_assigned",
            "user_assigned_identities": [{"resource_id": spec["azure"]["managed_identity_resource_id"]}],
        },
    }


def probe(d) -> dict:
    return {
        "initial_delay": d["probe_initial_delay_s"],
        "period": d["probe_period_s"],
        "failure_threshold": d["probe_failure_threshold"],
        "success_threshold": 1,
    }


def deployment(spec, name: str, model_ref: str, endpoint_name: str) -> dict:
    d = spec["deploy"]
    return {
        "$schema": SCHEMA.format("managedOnlineDeployment"),
        "name": name,
        "endpoint_name": endpoint_name,
        "model": model_ref,
        "instance_type": d["instance_type"],
        "instance_count": d["instance_count"],
        "code_configuration": {"code": DEPLOYMENT_CODE, "scoring_script": SCORING_SCRIPT},
        "environment": {
            "image": GPU_INFERENCE_IMAGE if serves_on_gpu(spec) else INFERENCE_IMAGE,
            "conda_file": "conda-inference.yml",
        },
        # read by serving/scoring.py, which stops generating at the request timeout instead of holding the model
        "environment_variables": {
            "MAX_NEW_TOKENS_LIMIT": str(d["max_new_tokens_limit"]),
            "REQUEST_TIMEOUT_MS": str(d["request_timeout_ms"]),
        },
        "request_settings": {
            "request_timeout_ms": d["request_timeout_ms"],
            "max_concurrent_requests_per_instance": d["max_concurrent_requests_per_instance"],
            "max_queue_wait_ms": d["max_queue_wait_ms"],
        },
        "liveness_probe": probe(d),
        "readiness_probe": probe(d),
    }


def next_deployment(live: str | None) -> str:
    return DEPLOYMENT_NAMES[1] if live == DEPLOYMENT_NAMES[0] else DEPLOYMENT_NAMES[0]


# ---- files ----------------------------------------------------------------------------------------


def shown(spec) -> dict:
    """The spec as the files show it: AZURE_* values (set or not) as '<from $VAR>', as spec.yaml shows them."""
    return redacted(spec, azure_env_paths(), fill_missing=True)


def write(ctx, name: str, obj: dict) -> Path:
    path = folder(ctx) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, dump_yaml(obj, flow_lists=False))
    return path


def written(ctx, spec, build) -> dict:
    """Write build(shown spec) as files; return build(real spec), the dicts the SDK loads."""
    for name, obj in build(shown(spec)).items():
        write(ctx, name, obj)
    return build(spec)


def stage_code(ctx, which: str) -> Path:
    """<run_dir>/azure/<which>: fresh copies of the packages it runs; the job's also spec.yaml (and the template)."""
    dst = folder(ctx) / which
    spec_file = Path(ctx.run_dir) / "spec.yaml"
    if not spec_file.is_file():
        raise StageFailed(f"{spec_file} is missing: the runner writes it before any stage runs")
    if dst.exists():
        shutil.rmtree(dst)  # no stale files: the SDK uploads the folder as it is
    for package in PACKAGES[which]:
        shutil.copytree(REPO_ROOT / package, dst / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if which != JOB_CODE:
        return dst
    shutil.copy2(spec_file, dst / "spec.yaml")
    staged = yaml.safe_load(spec_file.read_text())
    if (staged.get("model") or {}).get("chat_template"):  # model.chat_template: the job's spec names the copy
        shutil.copy2(staged["model"]["chat_template"], dst / TEMPLATE_FILE)
        staged["model"]["chat_template"] = TEMPLATE_FILE
        (dst / "spec.yaml").write_text(dump_yaml(staged))
    return dst


def relative_to_folder(ctx, path) -> str:
    """Job inputs are resolved from the job file's folder."""
    return os.path.relpath(Path(path).resolve(), folder(ctx).resolve())


def prepare_train(spec, ctx, data: dict, job_name: str | None = None) -> dict:
    """Stage the code, write conda-train.yml, environment.yml, compute.yml, job.yml; return the dicts.

    job_name: set by a real run (plan mode cannot know it); Azure generates one when it is missing.
    """
    stage_code(ctx, JOB_CODE)
    write(ctx, "conda-train.yml", train_conda(spec))
    inputs = relative_to_folder(ctx, data["train_file"]), relative_to_folder(ctx, data["test_file"])

    def build(s):
        env = environment(s)
        job_dict = job(s, env, *inputs, point=ctx.point.get("name", ""))
        return {
            "environment.yml": env,
            **({} if serverless(s) else {"compute.yml": compute(s)}),
            "job.yml": {"name": job_name, **job_dict} if job_name else job_dict,
        }

    if serverless(spec):
        (folder(ctx) / "compute.yml").unlink(missing_ok=True)  # a cluster planned here before: not this run's
    return written(ctx, spec, build)


def prepare_register(spec, ctx, path: str, job_name: str) -> dict:
    return written(ctx, spec, lambda s: {"model.yml": model(s, path, job_name)})


def prepare_deploy(spec, ctx, deployment_name: str, model_ref: str) -> dict:
    stage_code(ctx, DEPLOYMENT_CODE)  # every time: a fixed scoring script must reach the next deployment
    device = "cuda" if serves_on_gpu(spec) else "cpu"
    write(ctx, "conda-inference.yml", environments.conda(environments.inference_pip(device)))
    tokens = min(SMOKE_TOKENS, spec["deploy"]["max_new_tokens_limit"])
    request = score_client.payload([{"role": "user", "content": "Hello"}], {"max_new_tokens": tokens})
    write_atomic(folder(ctx) / "sample-request.json", json.dumps(request) + "\n")
    name = endpoint_name(spec)  # from the real spec: the files show the same name
    return written(
        ctx,
        spec,
        lambda s: {
            "endpoint.yml": endpoint(s, name),
            "deployment.yml": deployment(s, deployment_name, model_ref, name),
        },
    )
