"""POST /v1/responses, OpenAI's Responses API: through the openai SDK's `client.responses` and Microsoft Agent
Framework (its own venv) against a real server process, its shapes in process (httpx's ASGITransport) checked
against the openai package's own types, and its request contract without a model."""

import asyncio
import json
import os
import subprocess
import time

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving import responses_api as ra
from serving import serve
from serving.contract import BadRequest

from ..support import _endpoint as ep
from ..support import agent_venv

KEY = "k" * 32
MODEL = "phi3-chat-tiny"
ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",  # one or more
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


def chat_answer(client, messages, max_tokens=96) -> tuple[str, object]:
    """The chat-completions route's answer to the same conversation, and its usage."""
    done = client.chat.completions.create(model=ep.model_id(client), messages=messages, max_tokens=max_tokens)
    return done.choices[0].message.content, done.usage


# ---- through the openai SDK, against a real server -------------------------------------------------------


def test_answers_equal_the_chat_completions_answers(client, trained_run):
    for question, answer in ep.single_turn_pairs(trained_run[2], 3):
        done = client.responses.create(model=ep.model_id(client), input=question, max_output_tokens=96)
        said, used = chat_answer(client, [{"role": "user", "content": question}])
        assert done.output_text == said == answer
        assert done.status == "completed" and done.incomplete_details is None and done.object == "response"
        assert done.id.startswith("resp_") and done.model == ep.model_id(client)
        assert [(o.type, o.role, o.status) for o in done.output] == [("message", "assistant", "completed")]
        assert done.usage.input_tokens == used.prompt_tokens and done.usage.output_tokens == used.completion_tokens
        assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens


def test_instructions_and_message_items_reach_the_template(client, trained_run):
    rows = [
        r["messages"]
        for r in ep.training_rows(trained_run[2])
        if [m["role"] for m in r["messages"]][:4] == ["user", "assistant", "user", "assistant"]
    ]
    (first, earlier, second), instructions = rows[0][:3], "Answer as the assistant of this conversation."
    items = [  # as Agent Framework sends a conversation: typed parts, the earlier answer as output_text
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": first["content"]}]},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": earlier["content"], "annotations": []}],
        },
        {"type": "message", "role": "user", "content": second["content"]},
    ]
    done = client.responses.create(
        model=ep.model_id(client), input=items, instructions=instructions, max_output_tokens=96
    )
    with_system = [{"role": "system", "content": instructions}, first, earlier, second]
    said, used = chat_answer(client, with_system)
    assert done.output_text == said and done.instructions == instructions
    assert done.usage.input_tokens == used.prompt_tokens  # the same prompt, the system message included
    without = client.responses.create(model=ep.model_id(client), input=items, max_output_tokens=96)
    assert without.usage.input_tokens < done.usage.input_tokens  # the instructions reached the template
    assert without.output_text == chat_answer(client, [first, earlier, second])[0]


def test_a_streamed_response_adds_up_to_the_same_answer_in_openais_event_order(client, trained_run):
    from openai.types.responses import ResponseCompletedEvent, ResponseTextDeltaEvent

    question, answer = ep.single_turn_pairs(trained_run[2], 1)[0]
    events = list(client.responses.create(model=ep.model_id(client), input=question, max_output_tokens=96, stream=True))
    kinds = [e.type for e in events]
    deltas = [e for e in events if isinstance(e, ResponseTextDeltaEvent)]
    assert len(deltas) > 1 and "".join(d.delta for d in deltas) == answer  # it streamed, in more than one piece
    assert kinds == ORDER[:4] + ["response.output_text.delta"] * len(deltas) + ORDER[5:] + ["response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert isinstance(events[-1], ResponseCompletedEvent) and events[-1].response.output_text == answer
    assert events[0].response.id == events[-1].response.id and events[0].response.status == "in_progress"

    with client.responses.stream(model=ep.model_id(client), input=question, max_output_tokens=96) as stream:
        pieces = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(pieces) == final.output_text == answer and final.status == "completed"


def test_max_output_tokens_cuts_the_answer_as_incomplete(client, trained_run):
    question, _ = ep.single_turn_pairs(trained_run[2], 1)[0]
    done = client.responses.create(model=ep.model_id(client), input=question, max_output_tokens=3)
    assert done.status == "incomplete" and done.incomplete_details.reason == "max_output_tokens"
    assert done.usage.output_tokens == 3 and done.output[0].status == "incomplete" and done.output_text
    events = list(client.responses.create(model=ep.model_id(client), input=question, max_output_tokens=3, stream=True))
    assert events[-1].type == "response.incomplete"  # as OpenAI ends a cut stream, not response.completed
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert events[-1].response.output_text == done.output_text


def test_refusals_name_the_field_and_a_missing_key_is_an_authentication_error(client, server):
    import openai

    for kwargs, words in (
        ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools is not supported"),
        ({"previous_response_id": "resp_0"}, "previous_response_id is not supported"),
        ({"reasoning": {"effort": "low"}}, "reasoning is not supported"),
        ({"text": {"format": {"type": "json_object"}}}, "text.format"),
        ({"max_output_tokens": 10_000}, "max_output_tokens=10000 is over this endpoint's limit of 480"),
        ({"temperature": 3}, "temperature must be between 0 and 2"),
        ({"input": [{"role": "robot", "content": "x"}]}, r"input\[0\].role"),
    ):
        with pytest.raises(openai.BadRequestError, match=words):
            client.responses.create(**{"model": ep.model_id(client), "input": "hi", **kwargs})
    with pytest.raises(openai.NotFoundError, match="is not served here"):
        client.responses.create(model="gpt-4o", input="hi")
    bad = openai.OpenAI(base_url=f"{server.base}/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.responses.create(model=ep.model_id(client), input="hi")
    status, body = ep.post(f"{server.base}/v1/responses", {"input": "hi"}, None)  # no Authorization at all
    assert status == 401 and body["error"]["code"] == "invalid_api_key"


def test_a_response_stream_the_client_abandons_stops_generating(server):
    """Hung up after 3 deltas, generation stops at the next token: the server logs how far it got."""
    import http.client

    went_away = "response (stream): " + ep.WENT_AWAY
    body = {"input": "zq xv", "max_output_tokens": 480, "temperature": 2.0, "stream": True}
    for _ in range(5):  # sampled noise rarely ends within 3 pieces; one that does is tried again
        seen = server.log.read_text().count(went_away)
        conn = http.client.HTTPConnection("127.0.0.1", int(server.base.rsplit(":", 1)[1]), timeout=60)
        conn.request("POST", "/v1/responses", json.dumps(body), {"Authorization": f"Bearer {server.key}"})
        resp, deltas = conn.getresponse(), 0
        assert resp.status == 200
        while deltas < 3:
            line = resp.fp.readline()
            if not line or b'"response.completed"' in line or b'"response.incomplete"' in line:
                break
            deltas += line.startswith(b"data: ") and b'"response.output_text.delta"' in line
        conn.sock.close()  # hang up mid-answer
        conn.close()
        if deltas < 3:
            continue
        line = ep.wait_for_line(server.log, went_away, skip=seen)
        assert line, server.log.read_text()[-2000:]
        assert int(line.split(went_away)[1].split()[0]) < 100  # of 480: stopped at the hang-up, not at the end
        t0 = time.monotonic()
        status, _ = ep.post(f"{server.base}/v1/responses", {"input": "hi", "max_output_tokens": 8}, server.key)
        assert status == 200 and time.monotonic() - t0 < 30  # the model is free for the next request
        return
    raise AssertionError("every sampled answer ended within 3 pieces in 5 tries")


# ---- Microsoft Agent Framework, in its own venv, against the same server --------------------------------


@pytest.mark.slow
def test_the_readme_agent_framework_example_answers_with_the_fine_tuned_answers(client, server, trained_run):
    """tests/support/agent_framework_example.py, the README's example as it stands: OpenAIChatClient (Responses
    API) get_response and an agent's two-turn session (store=False, the second turn streamed), and
    OpenAIChatCompletionClient, each answering as the endpoint's own routes do."""
    python = agent_venv.python()
    (question, answer), (follow_up, _) = ep.single_turn_pairs(trained_run[2], 2)
    routes = ('"POST /v1/responses" 200', '"POST /v1/chat/completions" 200')
    before = [server.log.read_text().count(marker) for marker in (*routes, "response (stream): ")]
    run = subprocess.run(
        [str(python), str(agent_venv.EXAMPLE), f"{server.base}/v1", server.key, question, follow_up],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_OPENAI_"))},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    said = json.loads(run.stdout.splitlines()[-1])
    # get_response and both agent turns went through /v1/responses, OpenAIChatCompletionClient through chat
    assert ep.count_lines(server.log, routes[0], before[0] + 3) == before[0] + 3
    assert ep.count_lines(server.log, routes[1], before[1] + 1) == before[1] + 1
    assert said["get_response"] == said["agent_run"] == said["chat_completions"] == answer
    conversation = [
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": follow_up},
    ]
    follow_up_answer, used = chat_answer(client, conversation)
    assert said["agent_follow_up"] == follow_up_answer
    streamed = ep.wait_for_line(server.log, "response (stream): ", skip=before[2])
    assert f"after a {used.prompt_tokens}-token prompt" in streamed  # the session sent the whole conversation
    assert said["streamed_updates"] > 2


# ---- the shapes, in process, against the openai package's types -----------------------------------------


def call(app, path: str, body, key: str | None = KEY):
    """(status, decoded body or text) of one POST to app, in process."""

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            resp = await c.post(path, content=json.dumps(body).encode(), headers=headers)
            try:
                return resp.status_code, resp.json()
            except ValueError:
                return resp.status_code, resp.text

    return asyncio.run(go())


def sse_events(text: str) -> list[dict]:
    """The events of a Responses stream; each `event:` line names its data's type."""
    events = []
    for block in text.split("\n\n"):
        lines = block.split("\n")
        if block.startswith(":") or not block:
            continue
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        data = json.loads(lines[1][len("data: ") :])
        assert data["type"] == lines[0][len("event: ") :]
        events.append(data)
    return events


@pytest.fixture(scope="module")
def scorer(model_dir):
    from serving.scoring import Scorer

    return Scorer(model_dir, max_new_tokens_limit=128)


@pytest.fixture(scope="module")
def endpoint(scorer):
    return serve.make_app(scorer, KEY, MODEL)


def test_responses_and_events_are_what_the_openai_package_reads(endpoint, trained_run):
    from openai.types.responses import Response, ResponseStreamEvent
    from pydantic import TypeAdapter

    question, answer = ep.single_turn_pairs(trained_run[2], 1)[0]
    body = {"model": MODEL, "input": question, "max_output_tokens": 96, "store": False, "metadata": {"k": "v"}}
    status, reply = call(endpoint, "/v1/responses", body)
    done = Response.model_validate(reply, strict=True)
    assert status == 200 and done.output_text == answer and done.status == "completed"
    assert reply["store"] is False and done.metadata == {"k": "v"} and done.max_output_tokens == 96
    assert done.temperature == 0.0 and done.top_p == 1.0  # the endpoint's greedy defaults, as used

    status, text = call(endpoint, "/v1/responses", {**body, "stream": True})
    events = [TypeAdapter(ResponseStreamEvent).validate_python(e, strict=True) for e in sse_events(text)]
    assert status == 200 and [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == answer
    done_text = [e for e in events if e.type == "response.output_text.done"][0]
    assert done_text.text == answer == events[-1].response.output_text and events[-1].type == "response.completed"
    item_ids = {e.item_id for e in events if hasattr(e, "item_id")} | {
        e.item.id for e in events if e.type.startswith("response.output_item")
    }
    assert len(item_ids) == 1  # every event speaks of the one message item


def test_the_request_timeout_is_a_504_or_a_failed_stream(endpoint, scorer):
    from openai.types.responses import ResponseStreamEvent
    from pydantic import TypeAdapter

    body = {"input": "hi", "max_output_tokens": 8}
    scorer.timeout_s = 1e-9  # as --request-timeout-ms sets it: any generation runs past it
    try:
        status, reply = call(endpoint, "/v1/responses", body)
        assert status == 504 and "request timeout" in reply["error"]["message"]
        status, text = call(endpoint, "/v1/responses", {**body, "stream": True})
    finally:
        scorer.timeout_s = None
    events = [TypeAdapter(ResponseStreamEvent).validate_python(e, strict=True) for e in sse_events(text)]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]  # a token may come before it
    assert status == 200 and [e.type for e in events] == ORDER[:4] + [ORDER[4]] * len(deltas) + ["response.failed"]
    assert events[-1].response.status == "failed" and "request timeout" in events[-1].response.error.message
    assert events[-1].response.output[0].content[0].text == "".join(deltas)  # what was said before it stopped


def test_the_route_wants_the_key_and_names_itself_in_the_routes_hint(endpoint):
    for key in (None, "wrong-key-wrong-key"):
        status, body = call(endpoint, "/v1/responses", {"input": "hi"}, key=key)
        assert status == 401 and body["error"]["type"] == "authentication_error"
    status, body = call(endpoint, "/v1/responses/resp_0", {})
    assert status == 404 and "POST /v1/responses" in body["error"]["message"]


@pytest.mark.parametrize(
    "body,words",
    [
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools is not supported"),
        ({"input": "x", "tool_choice": "required"}, "tool_choice is not supported"),
        ({"input": "x", "previous_response_id": "resp_0"}, "send store=false and the whole conversation"),
        ({"input": "x", "conversation": "conv_0"}, "conversation is not supported"),
        ({"input": "x", "background": True}, "background is not supported"),
        ({"input": "x", "top_logprobs": 2}, "top_logprobs is not supported"),
        ({"input": "x", "include": ["message.output_text.logprobs"]}, "logprobs"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "a", "schema": {}}}}, "text.format"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": "4"}]}, "input[0] is a 'function_call"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]},
            "input[0].content[0] must be an input_text part",
        ),
        ({"input": []}, "input must be a string or a non-empty list"),
        ({"messages": [{"role": "user", "content": "x"}]}, 'the body has no "input"'),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens must be at least 1"),
        ({"input": "x", "max_output_tokens": 129}, "max_output_tokens=129 is over this endpoint's limit of 128"),
        ({"input": "word " * 600}, "max_output_tokens=64 that is over the 512 tokens this model attends to"),
    ],
)
def test_refusals_are_400s_in_openais_error_shape_naming_the_field(endpoint, body, words):
    status, reply = call(endpoint, "/v1/responses", body)
    assert status == 400 and reply["error"]["type"] == "invalid_request_error" and words in reply["error"]["message"]


# ---- the request contract, without a model ---------------------------------------------------------------


def test_parse_maps_responses_settings_onto_the_scoring_ones():
    messages, params, opts = ra.parse_responses(
        {
            "model": "m",
            "instructions": "be brief",
            "input": [
                {
                    "role": "developer",
                    "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}],
                },
                {"role": "user", "content": "hi", "type": "message", "id": "msg_0"},
            ],
            "max_output_tokens": 20,
            "temperature": 0.7,
            "top_p": 0.9,
            "store": True,
            "include": ["reasoning.encrypted_content"],
            "parallel_tool_calls": True,
            "user": "someone",
        },
        256,
        "m",
    )
    assert messages == [
        {"role": "system", "content": "be brief"},
        {"role": "system", "content": "ab"},
        {"role": "user", "content": "hi"},
    ]
    assert params == {
        "max_new_tokens": 20,
        "temperature": 0.7,
        "do_sample": True,
        "top_p": 0.9,
        "return_full_text": False,
    }
    assert opts["stream"] is False and opts["stop"] == [] and opts["instructions"] == "be brief"
    messages, params, _ = ra.parse_responses({"input": "hi", "max_output_tokens": None, "temperature": None}, 256, "m")
    assert messages == [{"role": "user", "content": "hi"}]
    assert params["temperature"] == 0.0 and params["do_sample"] is False and params["max_new_tokens"] == 64


def test_an_answer_said_in_one_piece_is_a_full_event_sequence():
    """What a caller whose upstream does not stream (the chat page over /score) sends: Events.whole."""
    from openai.types.responses import Response, ResponseStreamEvent
    from pydantic import TypeAdapter

    _, _, opts = ra.parse_responses({"input": "hi"}, 256, "m")
    events = sse_events(b"".join(ra.Events("resp_1", opts).whole({"text": "Hello.", "finish_reason": "stop"})).decode())
    parsed = [TypeAdapter(ResponseStreamEvent).validate_python(e, strict=True) for e in events]
    assert [e.type for e in parsed] == ORDER + ["response.completed"]
    assert parsed[-1].response.output_text == "Hello." and parsed[-1].response.usage is None  # no token counts
    done = Response.model_validate(
        ra.response_json("resp_2", opts, {"text": "Hi", "finish_reason": "length"}), strict=True
    )
    assert done.status == "incomplete" and done.incomplete_details.reason == "max_output_tokens"
    failed = sse_events(b"".join(ra.Events("resp_3", opts).failed("timed out")).decode())
    event = TypeAdapter(ResponseStreamEvent).validate_python(failed[0], strict=True)
    assert event.type == "response.failed" and event.response.error.message == "timed out"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
message_items = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "developer", "tool"])},
    optional={
        "content": st.text(max_size=10)
        | st.lists(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["input_text", "output_text", "input_image"])},
                optional={"text": st.text(max_size=10) | json_values},
            ),
            max_size=3,
        )
        | json_values,
        "type": st.sampled_from(["message", "function_call", "reasoning"]),
    },
)


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 1000)), deadline=None)
@given(
    body=st.dictionaries(
        st.sampled_from(
            [
                "input",
                "model",
                "instructions",
                "max_output_tokens",
                "temperature",
                "top_p",
                "stream",
                "store",
                "tools",
                "text",
                "reasoning",
                "metadata",
                "include",
            ]
        ),
        json_values | st.lists(message_items, max_size=3),
        max_size=8,
    )
)
def test_any_json_body_is_parsed_or_refused_with_a_message(body):
    try:
        messages, params, opts = ra.parse_responses(body, 256, "m")
    except BadRequest as exc:
        assert str(exc)
        return
    assert messages and all(m["role"] in {"system", "user", "assistant"} for m in messages)
    assert 1 <= params["max_new_tokens"] <= 256 and isinstance(opts["stream"], bool)
