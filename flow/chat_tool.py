"""The flow's one node: turn Prompt flow's chat history into messages and ask the endpoint."""
from promptflow.connections import CustomConnection
from promptflow.core import tool

from endpoint_client import ask


def to_messages(chat_history: list, question: str) -> list[dict]:
    """Prompt flow keeps history as [{"inputs": {"question": ...}, "outputs": {"answer": ...}}, ...]."""
    messages = []
    for turn in chat_history or []:
        messages.append({"role": "user", "content": str(turn["inputs"]["question"])})
        messages.append({"role": "assistant", "content": str(turn["outputs"]["answer"])})
    return messages + [{"role": "user", "content": question}]


@tool
def chat(question: str, chat_history: list, connection: CustomConnection, params: dict = None) -> str:
    # params: generation settings (max_new_tokens, temperature, do_sample, top_p); the endpoint's defaults fill the rest
    return ask(connection.configs["endpoint_url"], connection.secrets["api_key"],
               to_messages(chat_history, question), dict(params or {}))
