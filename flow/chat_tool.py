"""The flow's one node: turn Prompt flow's chat history into messages and ask the endpoint of one run.

Which endpoint: the Prompt flow connection named by the flow input `connection`, else by $PHI3_CONNECTION. The
chat stage creates one connection per run (phi3_<run name>_<8 hex>) and prints the commands that use it:
    .venv/bin/pf flow test --flow flow --inputs connection=phi3_default_1a2b3c4d question="..."
    .venv/bin/pf flow test --flow flow --ui --environment-variables PHI3_CONNECTION=phi3_default_1a2b3c4d
"""

import os

from promptflow.core import tool

from common.score_client import ScoreError, ask  # the runner's package: one /score client for every caller

CONNECTION_ENV = "PHI3_CONNECTION"


def to_messages(chat_history: list, question: str) -> list[dict]:
    """Prompt flow keeps history as [{"inputs": {"question": ...}, "outputs": {"answer": ...}}, ...]."""
    messages = []
    for turn in chat_history or []:
        messages.append({"role": "user", "content": str(turn["inputs"]["question"])})
        messages.append({"role": "assistant", "content": str(turn["outputs"]["answer"])})
    return messages + [{"role": "user", "content": question}]


def endpoint_of(name: str) -> tuple[str, str]:
    """(scoring URL, key) kept in the named Prompt flow connection."""
    if not name:
        raise ScoreError(
            f"no connection named: pass --inputs connection=NAME, or set {CONNECTION_ENV}=NAME "
            "(--environment-variables with --ui); the chat stage prints its run's name, and "
            "`.venv/bin/pf connection list` shows them all"
        )
    from promptflow.client import PFClient

    try:
        conn = PFClient().connections.get(name, with_secrets=True)
    except Exception as exc:  # promptflow's ConnectionNotFoundError and friends: say which and what to do
        raise ScoreError(
            f"no Prompt flow connection {name!r} ({type(exc).__name__}): run the chat stage of "
            "that run (python -m runner stages=[chat]) or see `.venv/bin/pf connection list`"
        ) from None
    return conn.configs.get("endpoint_url", ""), conn.secrets.get("api_key", "")


@tool
def chat(question: str, chat_history: list, connection: str = "", params: dict = None) -> str:
    # params: generation settings (max_new_tokens, temperature, do_sample, top_p); the endpoint's defaults fill the rest
    url, key = endpoint_of(connection or os.environ.get(CONNECTION_ENV, ""))
    return ask(url, key, to_messages(chat_history, question), dict(params or {}))
