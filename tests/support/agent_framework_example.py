"""Microsoft Agent Framework against the endpoint: the README's example, run as it stands by
tests/integration/test_responses_api.py in Agent Framework's own venv (tests/support/agent_venv.py).

    python agent_framework_example.py http://127.0.0.1:<port>/v1 KEY "a question" "a follow-up"

Prints what each call answered, as JSON.
"""

import asyncio
import json
import sys

from agent_framework import Message
from agent_framework.openai import OpenAIChatClient, OpenAIChatCompletionClient
from openai import OpenAI


async def main(url: str, key: str, question: str, follow_up: str) -> dict:
    model = OpenAI(base_url=url, api_key=key).models.list().data[0].id  # the served model's id
    said = {}

    client = OpenAIChatClient(model=model, base_url=url, api_key=key)  # the Responses API: POST /v1/responses
    reply = await client.get_response([Message("user", [question])], options={"max_tokens": 96})
    said["get_response"] = reply.text

    # The endpoint stores no responses: store=False keeps the conversation in the session, sent whole each turn
    agent = client.as_agent(name="phi3", default_options={"store": False, "max_tokens": 96})
    session = agent.create_session()
    said["agent_run"] = (await agent.run(question, session=session)).text
    stream = agent.run(follow_up, session=session, stream=True)
    said["streamed_updates"] = len([update.text async for update in stream if update.text])  # as generated
    said["agent_follow_up"] = (await stream.get_final_response()).text  # the pieces merged

    chat = OpenAIChatCompletionClient(model=model, base_url=url, api_key=key)  # POST /v1/chat/completions
    said["chat_completions"] = (await chat.get_response([Message("user", [question])], options={"max_tokens": 96})).text
    return said


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:5]))))
