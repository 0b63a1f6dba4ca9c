"""The HTTP contracts in process (httpx's ASGITransport): the endpoint's routes, auth and error shapes over a real
Scorer, its OpenAI responses checked against the openai package's own types, and the chat page's Host/Origin
rule. A real server process is tested where it is the point (tests/integration/test_serve.py, tests/integration/test_openai_api.py)."""

import asyncio
import json

import httpx
import pytest

from serving import chat_page, serve
from serving.chat_page import Upstream

from ..support import _endpoint as ep
from ..support.helpers import free_port

KEY = "k" * 32


def call(app, method: str, path: str, body=None, key: str | None = KEY, headers: dict | None = None):
    """(status, decoded body or text, response headers) of one request to app, in process."""

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
            sent = dict(headers or {})
            if key:
                sent["Authorization"] = f"Bearer {key}"
            content = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
            resp = await client.request(method, path, content=content, headers=sent)
            try:
                return resp.status_code, resp.json(), resp.headers
            except ValueError:
                return resp.status_code, resp.text, resp.headers

    return asyncio.run(go())


@pytest.fixture(scope="module")
def endpoint(trained_run):
    from serving.scoring import Scorer

    scorer = Scorer(trained_run[2]["stages"]["train"]["outputs"]["mlflow_model_dir"], max_new_tokens_limit=128)
    return serve.make_app(scorer, KEY, "phi3-chat-tiny"), trained_run[2]


def test_every_keyed_route_wants_the_key_and_says_so_in_its_own_shape(endpoint):
    app, _ = endpoint
    for key in (None, "wrong-key-wrong-key", "Basic abc"):
        status, body, _ = call(app, "POST", "/score", {"input_data": ["hi"]}, key=key)
        assert status == 401 and "Bearer" in body["error"]
        status, body, _ = call(app, "GET", "/v1/models", key=key)
        assert status == 401 and body["error"]["type"] == "authentication_error"
        status, body, _ = call(app, "POST", "/v1/chat/completions", {"messages": []}, key=key)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert call(app, "GET", "/health", key=None)[:2] == (200, {"status": "ok"})


def test_unknown_routes_and_methods_name_the_routes_that_exist(endpoint):
    app, _ = endpoint
    status, body, _ = call(app, "POST", "/predict", {"input_data": ["hi"]})
    assert status == 404 and "POST /score" in body["error"]
    status, body, _ = call(app, "GET", "/score")
    assert status == 405 and "GET /health" in body["error"]
    status, body, _ = call(app, "GET", "/v1/nothing")
    assert status == 404 and "POST /v1/chat/completions" in body["error"]["message"]


@pytest.mark.parametrize(
    "body,status,words",
    [
        (b"{broken", 400, "not valid JSON"),
        (b"", 400, "send a JSON body"),
        (b"x" * ((1 << 20) + 1), 413, "send a JSON body of 1 to"),
        ({"input_data": ["hi"], "params": {"max_new_tokens": 500}}, 400, "limit of 128"),
        ({"inputs": ["hi"]}, 400, "input_data"),
    ],
)
def test_bad_bodies_are_refused_with_their_status_and_a_reason(endpoint, body, status, words):
    app, _ = endpoint
    got, reply, _ = call(app, "POST", "/score", body)
    assert got == status and words in reply["error"]
    got, reply, _ = call(app, "POST", "/v1/chat/completions", body)
    assert got == status and reply["error"]["type"] == "invalid_request_error"


def test_a_prompt_over_the_context_is_refused_in_each_routes_words(endpoint):
    app, _ = endpoint
    long = "word " * 600
    status, body, _ = call(app, "POST", "/score", {"input_data": [long]})
    assert status == 400 and body["error"].startswith("input_data[0] is ") and "lower max_new_tokens" in body["error"]
    status, body, _ = call(app, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": long}]})
    assert status == 400 and body["error"]["message"].startswith("messages is ") and "max_tokens=64" in str(body)


def test_responses_are_what_the_openai_package_reads(endpoint):
    from openai.types import Model
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    app, manifest = endpoint
    question, answer = ep.single_turn_pairs(manifest, 1)[0]
    status, listed, _ = call(app, "GET", "/v1/models")
    assert status == 200 and listed["object"] == "list"
    assert [Model.model_validate(m, strict=True).id for m in listed["data"]] == ["phi3-chat-tiny"]

    chat = {"messages": [{"role": "user", "content": question}], "max_tokens": 96}
    status, body, _ = call(app, "POST", "/v1/chat/completions", chat)
    done = ChatCompletion.model_validate(body, strict=True)
    assert status == 200 and done.choices[0].message.content == answer and done.choices[0].finish_reason == "stop"
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    score_status, scored, _ = call(app, "POST", "/score", {"input_data": [question], "params": {"max_new_tokens": 96}})
    assert (score_status, scored) == (200, [answer])  # one answer, both routes

    status, text, headers = call(
        app, "POST", "/v1/chat/completions", {**chat, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [e[len("data: ") :] for e in text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(json.loads(e), strict=True) for e in events[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert chunks[-2].choices[0].finish_reason == "stop" and chunks[-1].usage.completion_tokens > 0


def test_the_chat_page_answers_only_its_own_page(tmp_path):
    """No model needed: the Host/Origin rule runs before any route (DNS rebinding, another tab's page)."""
    nowhere = Upstream("score", f"http://127.0.0.1:{free_port()}/score", "k" * 32, "m:1", 64, "nowhere")
    logged = []
    app = chat_page.make_app(lambda: nowhere, logged.append, nowhere, token=KEY)
    body = {"messages": [{"role": "user", "content": "hi"}]}
    for headers in ({"Host": "evil.example:8000"}, {"Origin": "http://evil.example"}):
        status, reply, _ = call(app, "POST", "/v1/chat/completions", body, key=None, headers=headers)
        assert status == 403 and "only its own page" in reply["error"]["message"]
    assert len(logged) == 2 and "evil.example" in logged[0]
    status, page, headers = call(app, "GET", "/")  # with the page's token (KEY here) as its Bearer key
    assert status == 200 and "<html" in page.lower() and "frame-ancestors 'none'" in headers["content-security-policy"]
    status, reply, _ = call(app, "POST", "/v1/chat/completions", body)  # its own page: sent on, no one there
    assert status == 502 and "cannot reach the endpoint" in reply["error"]["message"]
    status, reply, _ = call(app, "POST", "/v1/chat/completions", {"messages": []})  # checked before sending
    assert status == 400 and "messages must be a non-empty list" in reply["error"]["message"]


def test_what_openai_clients_may_send_at_the_edges(endpoint, capsys):
    """A temperature too small to divide the logits by answers greedily on every route (not a 500); stream: null
    means no stream; logit_bias, which the endpoint cannot honour, is refused rather than ignored; a control
    character in a request path is written as an escape in the access log, never as a line of its own."""
    app, manifest = endpoint
    question, answer = ep.single_turn_pairs(manifest, 1)[0]
    messages = [{"role": "user", "content": question}]
    for temperature in (1e-300, 1e-6):
        status, body, _ = call(app, "POST", "/v1/chat/completions", {"messages": messages, "temperature": temperature})
        assert status == 200 and body["choices"][0]["message"]["content"] == answer, body
    params = {"temperature": 1e-300, "do_sample": True, "max_new_tokens": 96}
    status, body, _ = call(app, "POST", "/score", {"input_data": [question], "params": params})
    assert status == 200 and body == [answer]
    status, body, _ = call(app, "POST", "/v1/chat/completions", {"messages": messages, "stream": None})
    assert status == 200 and body["object"] == "chat.completion"
    status, body, _ = call(app, "POST", "/v1/chat/completions", {"messages": messages, "logit_bias": {"50": 100}})
    assert status == 400 and "logit_bias is not supported" in body["error"]["message"]
    capsys.readouterr()
    call(app, "GET", '/x%0a127.0.0.1 "POST /score" 200 0.01s%1b[2J', key=None)
    logged = capsys.readouterr().out
    assert logged.count("\n") == 1 and '\\n127.0.0.1 "POST /score"' in logged and "\\x1b[2J" in logged
    assert "\x1b" not in logged
