"""Shared test set-up: offline hub, no telemetry, configs composed with Hydra's compose API."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["PF_DISABLE_TRACING"] = "true"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# torch takes every core in every process: xdist workers (and the servers and runs they start, which inherit this)
# share the cores instead of fighting for them. Set before any test module imports torch.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
if _workers > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))
for var in (
    "AZURE_SUBSCRIPTION_ID",
    "AZURE_RESOURCE_GROUP",
    "AZURE_ML_WORKSPACE_NAME",
    "AZURE_MANAGED_IDENTITY_RESOURCE_ID",
    "AZURE_MANAGED_IDENTITY_CLIENT_ID",
    "MLFLOW_TRACKING_URI",
):
    os.environ.pop(var, None)

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

from runner import CONF_DIR  # noqa: E402
from runner.spec import to_spec  # noqa: E402
from runner.spec.settle import settle  # noqa: E402

NEEDS_A_MODEL = {
    "trained_run",
    "trained_phi4mini",
    "model_dir",
    "tiny",
}  # fixtures that train or build a model (the server ones use them)


def pytest_collection_modifyitems(config, items):
    """A test that needs a trained model is slow, whatever its module says: ./dev check runs the rest. A gpu test
    is skipped where torch sees no CUDA device (it would fail for the machine, not for the code)."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_tests:
        import torch

        if not torch.cuda.is_available():
            for item in gpu_tests:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU: run ./dev test -m gpu on a GPU machine"))
    for item in items:
        if NEEDS_A_MODEL & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _no_tracking_uri_leaks():
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which the next runner would take for the user's choice:
    code that points mlflow somewhere uses trainer.tracking.point_at. A leak fails the test that made it."""
    yield
    leaked = {v: os.environ.pop(v) for v in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI") if v in os.environ}
    if leaked:
        pytest.fail(f"left in the environment: {leaked}")


def compose_once(output_root, *overrides):
    """The resolved run spec of conf/ with these overrides, outputs under output_root."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"run.output_root={output_root}", *overrides])
    GlobalHydra.instance().clear()
    return settle(to_spec(cfg), None)  # as a single run settles it (data.eval=auto: split)


@pytest.fixture
def compose_spec(tmp_path):
    """compose_spec('compute=a100', ...) -> the resolved run spec, outputs under tmp_path."""
    return lambda *overrides: compose_once(tmp_path / "outputs", *overrides)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """The default tiny fine-tune on the shipped sample (data + train stages), done once per session.

    Returns (spec, run_dir, manifest dict). About 30 s on 2 cores.
    """
    from runner.app import execute, write_spec

    root = tmp_path_factory.mktemp("trained")
    spec = compose_once(root / "outputs", "stages=[data,train]")
    run_dir = root / "outputs" / "default" / "local_tiny_sample"
    run_dir.mkdir(parents=True)
    write_spec(spec, run_dir)
    manifest = execute(spec, run_dir, out=lambda *_: None)
    return spec, run_dir, manifest


@pytest.fixture(scope="session")
def trained_phi4mini(tmp_path_factory):
    """trained_run's fine-tune on model=tiny_phi4mini: Phi-4-mini's shape, template, special tokens and pad.

    Returns (spec, run_dir, manifest dict). About 25 s on 2 cores.
    """
    from runner.app import execute, write_spec

    root = tmp_path_factory.mktemp("trained-phi4mini")
    spec = compose_once(root / "outputs", "model=tiny_phi4mini", "stages=[data,train]")
    run_dir = root / "outputs" / "default" / "local_tiny_phi4mini_sample"
    run_dir.mkdir(parents=True)
    write_spec(spec, run_dir)
    manifest = execute(spec, run_dir, out=lambda *_: None)
    return spec, run_dir, manifest
