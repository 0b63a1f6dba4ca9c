"""chat: ask the configured questions through the Prompt flow flow in flow/, which calls the endpoint.

The flow reads the endpoint from the Prompt flow connection `phi3_endpoint` (written here), so
`pf flow test --flow flow --inputs question="..."` and `pf flow serve --source flow --port 8080 --host localhost`
use the same endpoint afterwards. Prompt flow keeps the key encrypted in its home directory
(~/.promptflow, or $PF_HOME_DIRECTORY).
"""
import json
import logging
import os
from contextlib import contextmanager

from trainer.generation import PARAMS

from .. import REPO_ROOT
from ..errors import StageFailed
from ..registry import implementation

FLOW_DIR = REPO_ROOT / "flow"
CONNECTION_NAME = "phi3_endpoint"  # flow/flow.dag.yaml names the same connection


def generation_params(spec) -> dict:
    """The generation settings chat.* sets; the endpoint's defaults (trainer/generation.py) cover the rest."""
    return {k: spec["chat"][k] for k in PARAMS if k in spec["chat"]}


def keep_promptflow_local():
    """No telemetry, no trace service, no PyPI version check: nothing leaves this machine.

    Written to Prompt flow's config in its home directory, so `pf` run by hand behaves the same.
    """
    os.environ.setdefault("PF_DISABLE_TRACING", "true")
    os.environ.setdefault("PF_LOGGING_LEVEL", "WARNING")
    # promptflow builds an Application Insights exporter even with telemetry off; unless told not to, it
    # fetches that exporter's settings from a Microsoft host in a background thread
    os.environ["APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED"] = "true"
    os.environ["APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL"] = "true"
    from promptflow._sdk._configuration import Configuration
    from promptflow._sdk._constants import HOME_PROMPT_FLOW_DIR

    config = Configuration.get_instance()
    for key, value in (("telemetry.enabled", False), ("trace.destination", "none")):
        if config.get_config(key) != value:
            config.set_config(key, value)
    # promptflow asks pypi.org for a newer release every 7 days and has no switch for it; a last check in
    # the far future keeps it from ever being due
    check = HOME_PROMPT_FLOW_DIR / "pf_version_check.json"
    try:
        cached = json.loads(check.read_text())
    except (OSError, ValueError):
        cached = {}
    if not str(cached.get("last_check_time", "")).startswith("2999"):
        check.write_text(json.dumps({**cached, "last_check_time": "2999-01-01 00:00:00.000000"}))


@contextmanager
def quiet_logs():
    """Prompt flow logs its tracing set-up to the root logger at INFO; the answers are what matter here."""
    root = logging.getLogger()
    # promptflow reads each connection secret by attribute to scrub it from logs, and warns about doing so
    conn = logging.getLogger("promptflow.core._connection")
    levels = root.level, conn.level
    root.setLevel(max(root.level, logging.WARNING))
    conn.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(levels[0])
        conn.setLevel(levels[1])


def save_connection(pf, url: str, key: str):
    from promptflow._sdk._errors import StoreConnectionEncryptionKeyError
    from promptflow.entities import CustomConnection
    try:
        pf.connections.create_or_update(
            CustomConnection(name=CONNECTION_NAME, configs={"endpoint_url": url}, secrets={"api_key": key}))
    except StoreConnectionEncryptionKeyError:
        raise StageFailed("Prompt flow found no keyring to keep its connection encryption key in (usual on a "
                          "machine without a desktop session): install keyrings.alt into this environment") from None


def ask(pf, question: str, params: dict, chat_history=None) -> str:
    inputs = {"question": question, "chat_history": chat_history or [], "params": params}
    try:
        return pf.test(flow=str(FLOW_DIR), inputs=inputs)["answer"]
    except Exception as exc:  # the flow wraps the tool's error; its message says what went wrong
        raise StageFailed(f"the flow failed on {question!r}: {exc}") from None


def run(spec, ctx):
    url, key = implementation("deploy", spec).endpoint_credentials(spec, ctx)
    keep_promptflow_local()
    from promptflow.client import PFClient

    settings = generation_params(spec)
    answers = []
    with quiet_logs():
        pf = PFClient()
        save_connection(pf, url, key)
        for question in spec["chat"]["questions"]:
            answer = ask(pf, question, settings)
            ctx.log(f"[chat] Q: {question}\n[chat] A: {answer}")
            answers.append({"question": question, "answer": answer})
    return {"answers": answers, "connection": CONNECTION_NAME, "endpoint_url": url, "flow": str(FLOW_DIR)}


def plan(spec, ctx):
    where = implementation("deploy", spec).ENDPOINT
    return [f"asks {len(spec['chat']['questions'])} question(s) through flow/ (Prompt flow), connection "
            f"{CONNECTION_NAME} -> {where}, with {generation_params(spec)} (the endpoint's defaults for the rest)"]
