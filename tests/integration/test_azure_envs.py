"""The generated Azure environments resolve for linux x86_64 / Python 3.11 as Azure's image build resolves them.

pip resolves each pip list of conda-train.yml (GPU and CPU) and conda-inference.yml without installing
(--dry-run --report) for the target platform. PyTorch's own index (download.pytorch.org) cannot be reached
from here: the CUDA 12 torch pin is checked textually, and a metadata-only stand-in wheel of that exact
version lets the rest resolve around it. The CPU build resolves for real from this machine's wheel.
"""

import json
import subprocess
import sys
import zipfile

import pytest

from runner.azure import environments as envs

pytestmark = pytest.mark.slow
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64", "any"]


def stand_in_wheel(folder, version: str):
    """torch-<version>-py3-none-any.whl with metadata only: the pin as PyTorch's index would serve it."""
    path = folder / f"torch-{version}-py3-none-any.whl"
    info = f"torch-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{info}/RECORD", "")
    return path


def resolve(pip_list, tmp_path, find_links=None) -> dict:
    """{name: version} of everything pip would install for linux x86_64 / Python 3.11."""
    report = tmp_path / "report.json"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--quiet",
        "--report",
        str(report),
        "--ignore-installed",
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        *[f"--platform={p}" for p in PLATFORMS],
        *(["--find-links", str(find_links)] if find_links else []),
        *envs.packages(pip_list),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}


def nvidia(resolved: dict) -> dict:
    return {n: v for n, v in resolved.items() if n.startswith("nvidia-") or n in ("triton", "cuda-bindings")}


def test_the_gpu_job_takes_a_cuda_12_torch_and_the_pinned_mlflow_pair(tmp_path):
    pip = envs.train_pip("cuda")
    torch = next(p for p in pip if envs.name_of(p) == "torch")
    assert torch.endswith("+cu126") and "--extra-index-url https://download.pytorch.org/whl/cu126" in pip
    stand_in_wheel(tmp_path, torch.split("==")[1])
    resolved = resolve(pip, tmp_path, find_links=tmp_path)
    assert resolved["torch"] == torch.split("==")[1]
    # nothing else drags in a CUDA 13 runtime (PyPI's torch would: nvidia-cuda-runtime 13.x)
    assert not [n for n, v in nvidia(resolved).items() if "cu13" in n or v.startswith("13.")], nvidia(resolved)
    assert resolved["azureml-mlflow"] == "1.62.0.post6" and resolved["mlflow"] == resolved["mlflow-skinny"] == "3.15.0"


def test_the_cpu_job_resolves_without_nvidia_wheels(tmp_path):
    resolved = resolve(envs.train_pip("cpu"), tmp_path)
    assert resolved["torch"] == "2.13.0+cpu" and nvidia(resolved) == {}
    assert resolved["azureml-mlflow"] == "1.62.0.post6" and resolved["mlflow"] == "3.15.0"


def test_the_inference_environment_resolves_without_nvidia_wheels_or_mlflows_server(tmp_path):
    resolved = resolve(envs.inference_pip(), tmp_path)
    assert resolved["torch"] == "2.13.0+cpu" and nvidia(resolved) == {}
    assert resolved["azureml-inference-server-http"] == "1.5.1" and resolved["mlflow-skinny"] == "3.17.2"
    assert "mlflow" not in resolved and "scikit-learn" not in resolved


def test_every_package_of_both_environments_is_pinned():
    for pip in (envs.train_pip("cuda"), envs.train_pip("cpu"), envs.inference_pip()):
        for pin in envs.packages(pip):
            assert "==" in pin, pin


def test_unpinned_azureml_mlflow_is_what_breaks(tmp_path):
    """Why the pair is pinned: beside mlflow 3.17, pip silently falls back to an azureml-mlflow without a cap."""
    resolved = resolve(["mlflow-skinny==3.17.2", "azureml-mlflow"], tmp_path)
    assert resolved["azureml-mlflow"] != "1.62.0.post6" and resolved["mlflow-skinny"] == "3.17.2"
