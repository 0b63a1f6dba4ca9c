"""The Python environments Azure ML builds for the training job and for the deployment: every package pinned.

Both start from trainer/requirements.txt (what `python -m trainer` and the scoring script run on here) and
change only what Azure needs, each change said below with its reason:

- torch. PyPI's Linux wheel of torch 2.13 is built for CUDA 13 (nvidia-cuda-runtime 13.x) and needs an NVIDIA
  driver of the 580 series; Azure ML's GPU nodes and the acft-hf-nlp-gpu image are on CUDA 12 (see TORCH_BUILD).
  GPU jobs take PyTorch's own CUDA 12 build, CPU jobs and the CPU deployment its CPU build (no multi-GB
  nvidia-* wheels on a CPU VM), each from PyTorch's index for that build, named in the conda file.
- MLflow in the job. Inside a job MLFLOW_TRACKING_URI is azureml://..., which mlflow reaches only through the
  azureml-mlflow plugin. azureml-mlflow 1.62.0.post6 caps mlflow-skinny at 3.15.0; left unpinned, pip falls
  back to azureml-mlflow 1.60.0 beside mlflow 3.17, whose artifact-repository call fails with a TypeError. So
  the job pins the newest pair that fits together: mlflow 3.15.0 + azureml-mlflow 1.62.0.post6.
- The deployment needs only what serving/scoring.py imports, plus Azure ML's inference server.
"""

import re

from trainer.files import pinned_requirements

from .. import REPO_ROOT

PYTHON = "python=3.11"
PYTORCH_INDEX = "https://download.pytorch.org/whl/{}"
# compute.device -> PyTorch build (the wheel's local version and its index). Azure ML does not publish its
# cluster nodes' driver; its compute-instance images run the 535 series (CUDA 12.2; azure-ai-docs,
# azure-machine-learning-ci-image-release-notes.md) and its own 2026 inference Dockerfiles add cuda-compat for
# "hosts with older (e.g. 535-series) drivers" (azureml-assets, foundation-model-inference). PyTorch 2.13 ships
# CUDA 13.0 (PyPI's default), 13.2 and a legacy 12.6 build (pytorch RELEASE.md); 12.6 runs on any CUDA 12
# driver through minor-version compatibility, and is what Azure's own current acft-hf-nlp-gpu image uses
# (torch 2.10.0+cu126, azureml-assets assets/training/finetune_acft_hf_nlp/environments/acpt). The wheel
# brings its CUDA libraries (nvidia-*-cu12 wheels), so the image's own CUDA does not matter, only the driver.
TORCH_BUILD = {"cuda": "cu126", "cpu": "cpu"}
JOB_MLFLOW = ["mlflow==3.15.0", "azureml-mlflow==1.62.0.post6"]
INFERENCE_SERVER = "azureml-inference-server-http==1.5.1"  # serves init()/run() of the scoring script
INFERENCE_PACKAGES = ("torch", "transformers", "tokenizers", "pyyaml")  # what scoring.py needs, with mlflow-skinny


def name_of(pin: str) -> str:
    return re.split(r"[=<>!~;\[ ]", pin, maxsplit=1)[0].strip().lower()


def version_of(pin: str) -> str:
    return pin.split("==", 1)[1].split("+", 1)[0].strip()


def torch_lines(device: str) -> list[str]:
    """['--extra-index-url <PyTorch's index for the build>', 'torch==<version>+<build>']."""
    build = TORCH_BUILD["cuda" if device == "cuda" else "cpu"]
    torch = next(p for p in pinned_requirements() if name_of(p) == "torch")
    return [f"--extra-index-url {PYTORCH_INDEX.format(build)}", f"torch=={version_of(torch)}+{build}"]


def _replace(pins: list[str], new: list[str]) -> list[str]:
    """pins with each package of new replaced (or added) by new's pin; option lines of new go first."""
    names = {name_of(p) for p in new if not p.startswith("-")}
    options = [p for p in new if p.startswith("-")]
    return options + [p for p in pins if name_of(p) not in names] + [p for p in new if not p.startswith("-")]


def train_pip(device: str) -> list[str]:
    """The job's pip list for compute.device (cuda or cpu)."""
    return _replace(pinned_requirements(), torch_lines(device) + JOB_MLFLOW)


def inference_pip(device: str = "cpu") -> list[str]:
    """The deployment's pip list: a CPU VM (Standard_E4s_v3), or a GPU one (device cuda: PyTorch's CUDA build),
    serving through Azure ML's inference server."""
    pins = pinned_requirements()
    needed = [p for p in pins if name_of(p) in INFERENCE_PACKAGES]
    # mlflow-skinny loads the model as mlflow does, without mlflow's server, UI and SQL dependencies; its
    # transformers flavor imports pandas, which skinny does not bring: the version .venv runs (constraints.txt)
    skinny = "mlflow-skinny==" + version_of(next(p for p in pins if name_of(p) == "mlflow"))
    return _replace(needed, torch_lines(device) + [skinny, locked("pandas"), INFERENCE_SERVER])


def locked(name: str) -> str:
    """name's pin in constraints.txt, the lock of the project's own environment."""
    lines = (REPO_ROOT / "constraints.txt").read_text().splitlines()
    return next(ln.split("#", 1)[0].strip() for ln in lines if name_of(ln) == name and "==" in ln)


def conda(pip: list[str]) -> dict:
    return {"name": "phi3-runner", "channels": ["conda-forge"], "dependencies": [PYTHON, "pip", {"pip": pip}]}


def packages(pip: list[str]) -> list[str]:
    """The package pins of a pip list, without option lines: what a local virtualenv installs."""
    return [p for p in pip if not p.startswith("-")]
