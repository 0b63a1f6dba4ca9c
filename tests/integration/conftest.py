"""What the endpoint's contract tests share: the session's trained model behind a real local endpoint, and the
openai client pointed at it. Module scope: each module that asks has a server of its own, on the worker running
that module (a module that needs another server, or another model, defines its own fixture of the same name)."""

import pytest

from ..support import _endpoint as ep


@pytest.fixture(scope="module")
def model_dir(trained_run):
    return trained_run[2]["stages"]["train"]["outputs"]["mlflow_model_dir"]


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    s = ep.Server(model_dir, tmp_path_factory.mktemp("endpoint"), limit=480)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=f"{server.base}/v1", api_key=server.key, max_retries=0, timeout=60)
