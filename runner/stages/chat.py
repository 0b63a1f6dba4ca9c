"""chat: ask the configured questions through the Prompt flow flow in flow/, which calls the endpoint; with
chat.ui=true, serve the chat page instead (serving/chat_page.py) until Ctrl-C. The run's Prompt flow connection,
which this stage writes and teardown deletes: runner/stages/prompt_flow.py.
"""

from pathlib import Path

from common.generation import PARAMS

from ..context import Context
from ..errors import StageFailed
from ..hints import Again
from ..manifest import Manifest
from ..registry import implementation
from ..rundir import run_name
from .prompt_flow import FLOW_DIR, commands, connection_name, keep_promptflow_local, quiet_logs, save_connection


def generation_params(spec) -> dict:
    """The generation settings chat.* sets; the endpoint's defaults (common/generation.py) cover the rest."""
    return {k: spec["chat"][k] for k in PARAMS if k in spec["chat"]}


def ask(pf, connection: str, question: str, params: dict, chat_history=None) -> str:
    inputs = {"question": question, "chat_history": chat_history or [], "params": params, "connection": connection}
    try:
        return pf.test(flow=str(FLOW_DIR), inputs=inputs)["answer"]
    except Exception as exc:  # the flow wraps the tool's error; its message says what went wrong
        raise StageFailed(f"the flow failed on {question!r}: {exc}") from None


def run(spec, ctx):
    url, key = implementation("deploy", spec).endpoint_credentials(spec, ctx)
    keep_promptflow_local()
    from promptflow.client import PFClient

    settings = generation_params(spec)
    name = connection_name(spec, ctx.run_dir)
    answers = []
    with quiet_logs():
        pf = PFClient()
        save_connection(pf, name, url, key)
        ctx.log(
            f"[chat] Prompt flow connection {name} -> {url}; to chat through it:\n"
            + "\n".join(f"[chat]   {c}" for c in commands(name))
        )
        if spec["chat"]["ui"]:
            ctx.log("[chat] chat.ui=true: the chat page is served next, instead of the configured questions")
        else:
            for question in spec["chat"]["questions"]:
                answer = ask(pf, name, question, settings)
                ctx.log(f"[chat] Q: {question}\n[chat] A: {answer}")
                answers.append({"question": question, "answer": answer})
    return {"answers": answers, "connection": name, "endpoint_url": url, "flow": str(FLOW_DIR)}


def upstream(spec, run_dir, again=None):
    """What the chat page forwards to, read afresh from the manifest and the deploy backend (a redeploy moves a
    local endpoint): the endpoint's OpenAI routes when deploy recorded them, else its /score."""
    from serving.chat_page import Upstream

    ctx = Context(Path(run_dir), Manifest(run_dir), log=lambda *_: None, again=again or Again())
    url, key = implementation("deploy", spec).endpoint_credentials(spec, ctx)
    out, reg = ctx.upstream("deploy"), ctx.manifest.outputs("register")
    model = (
        out.get("model_id")
        or f"{reg.get('model_name', spec['register']['model_name'])}:{reg.get('model_version', '?')}"
    )
    limit = spec["deploy"]["max_new_tokens_limit"]
    # what the page's header names, and the command it shows once the endpoint is gone
    names = {"run_name": run_name(spec, run_dir), "bring_back": ctx.again.redeploy()}
    if out.get("openai_base_url"):
        where = f"local endpoint {out['openai_base_url']}"
        return Upstream("openai", out["openai_base_url"], key, model, limit, where, **names)
    host = url.split("//", 1)[-1].split("/", 1)[0]
    return Upstream("score", url, key, model, limit, f"endpoint {host} (/score)", **names)


def serve(spec, run_dir, out=None, again=None) -> int:
    """chat.ui=true: the chat page in the foreground (python -m runner stages=[chat] chat.ui=true)."""
    from serving import chat_page

    first = upstream(spec, run_dir, again)  # fails now, with the reason, when there is no endpoint to talk to
    try:
        return chat_page.serve(lambda: upstream(spec, run_dir, again), "127.0.0.1", spec["chat"]["ui_port"], out, first)
    except OSError as exc:
        raise StageFailed(
            f"cannot serve the chat page on 127.0.0.1:{spec['chat']['ui_port']} ({exc.strerror}): "
            "pick another chat.ui_port, or 0 for a free one"
        ) from None


def plan(spec, ctx):
    where = implementation("deploy", spec).ENDPOINT
    name = connection_name(spec, ctx.run_dir)
    if spec["chat"]["ui"]:
        port = spec["chat"]["ui_port"] or "a free port"
        return [
            f"Prompt flow connection {name} -> {where}; then serves the chat page on 127.0.0.1 ({port}) "
            "until Ctrl-C (chat.ui=true): the configured questions are not asked"
        ]
    return [
        f"asks {len(spec['chat']['questions'])} question(s) through flow/ (Prompt flow), connection "
        f"{name} -> {where}, with {generation_params(spec)} (the endpoint's defaults for the rest)"
    ]
