"""The run's Prompt flow connection, phi3_<run name>_<8 hex of its run directory>: written by the chat stage,
deleted by teardown on either backend. The flow takes its name as the input `connection` (or $PHI3_CONNECTION), so
two runs deployed at once each chat with their own model, and `pf flow test --flow flow --inputs connection=<name>
...` (or `--ui --environment-variables PHI3_CONNECTION=<name>`) reaches this run's endpoint afterwards. Prompt flow
keeps the key encrypted in its home directory (~/.promptflow, or $PF_HOME_DIRECTORY); it is imported only where a
connection is written or one was.
"""

import hashlib
import json
import logging
import os
import re
import shlex
from contextlib import contextmanager
from pathlib import Path

from .. import REPO_ROOT
from ..errors import StageFailed
from ..hints import pf_program

FLOW_DIR = REPO_ROOT / "flow"
CONNECTION_ENV = "PHI3_CONNECTION"  # flow/chat_tool.py reads the connection's name here when no input names it


def connection_name(spec, run_dir) -> str:
    """This run's Prompt flow connection: its run name and a hash of its run directory (two runs never share)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", spec["run"]["name"])[:40]
    return f"phi3_{name}_{hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:8]}"


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


def save_connection(pf, name: str, url: str, key: str):
    from promptflow._sdk._errors import StoreConnectionEncryptionKeyError
    from promptflow.entities import CustomConnection

    try:
        pf.connections.create_or_update(
            CustomConnection(name=name, configs={"endpoint_url": url}, secrets={"api_key": key})
        )
    except StoreConnectionEncryptionKeyError:
        raise StageFailed(
            "Prompt flow found no keyring to keep its connection encryption key in (usual on a "
            "machine without a desktop session): install keyrings.alt into this environment"
        ) from None


def commands(name: str) -> list[str]:
    """The commands that chat through this run's connection, as pasted where the runner ran (./dev pf runs in the
    repository root; another pf is given the flow's full path unless this is the repository root)."""
    pf = pf_program()
    here_is_root = Path.cwd().resolve() == REPO_ROOT.resolve()
    flow = "flow" if pf.endswith("dev pf") or here_is_root else shlex.quote(str(FLOW_DIR))
    return [
        f'{pf} flow test --flow {flow} --inputs connection={name} question="..."',
        f"{pf} flow test --flow {flow} --ui --environment-variables {CONNECTION_ENV}={name}",
    ]


def delete_connection(ctx) -> None:
    """Teardown (either backend): forget this run's connection, as its endpoint is gone. Prompt flow (seconds to
    import) is loaded only when this run's chat stage ever wrote one."""
    name, log = ctx.manifest.outputs("chat").get("connection"), ctx.log
    if not name:
        return
    keep_promptflow_local()
    from promptflow.client import PFClient

    with quiet_logs():
        pf = PFClient()
        try:
            pf.connections.get(name)
        except Exception:  # none: the chat stage never ran here, or it is gone already
            return
        try:
            pf.connections.delete(name)
        except Exception as exc:  # the endpoint is gone already; a stale connection is only a nuisance
            log(
                f"[teardown] could not delete the Prompt flow connection {name} ({type(exc).__name__}: {exc}); "
                f"{pf_program()} connection delete --name {name} removes it"
            )
            return
    log(f"[teardown] deleted the Prompt flow connection {name}")
