"""The local endpoint's OpenAI routes, through the openai SDK (a client nobody here wrote) and raw HTTP."""

import json
import os
import threading
import time
import urllib.request

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving import openai_api as oa
from serving.contract import BadRequest

from ..support import _endpoint as ep

# ---- through the openai SDK ------------------------------------------------------------------------------


def test_models_lists_the_one_served_model(client, model_dir):
    from pathlib import Path

    ids = [m.id for m in client.models.list().data]
    assert ids == [Path(model_dir).name]  # ep.Server gives no --model-name: the folder's name


def test_greedy_answers_equal_the_score_routes(client, server, trained_run):
    pairs = ep.single_turn_pairs(trained_run[2], 3)
    for question, answer in pairs:
        messages = [{"role": "user", "content": question}]
        done = client.chat.completions.create(model=ep.model_id(client), messages=messages, max_tokens=96)
        status, scored = ep.post(server.url, {"input_data": [messages], "params": {"max_new_tokens": 96}}, server.key)
        assert status == 200 and done.choices[0].message.content == scored[0] == answer
        assert done.choices[0].finish_reason == "stop" and done.object == "chat.completion"
        assert (
            done.usage.completion_tokens > 0
            and done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
        )


def test_streamed_answers_add_up_to_the_same_answer(client, trained_run):
    for question, answer in ep.single_turn_pairs(trained_run[2], 3):
        stream = client.chat.completions.create(
            model=ep.model_id(client),
            max_tokens=96,
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": question}],
        )
        chunks = list(stream)
        pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert "".join(pieces) == answer and len(pieces) > 1  # it streamed, in more than one piece
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].usage.completion_tokens > 0 and not chunks[-1].choices


def test_a_conversation_so_far_reaches_the_model(client, server, trained_run):
    rows = [
        r["messages"]
        for r in ep.training_rows(trained_run[2])
        if [m["role"] for m in r["messages"]][:4] == ["user", "assistant", "user", "assistant"]
    ]
    messages = rows[0][:3]
    done = client.chat.completions.create(messages=messages, model=ep.model_id(client), max_tokens=96)
    assert (
        done.choices[0].message.content
        == ep.post(server.url, {"input_data": [messages], "params": {"max_new_tokens": 96}}, server.key)[1][0]
    )


def test_a_bad_key_is_an_authentication_error(server):
    import openai

    bad = openai.OpenAI(base_url=f"{server.base}/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_an_over_long_prompt_is_a_bad_request_with_its_token_count(client):
    import openai

    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=ep.model_id(client), max_tokens=64, messages=[{"role": "user", "content": "word " * 2000}]
        )
    message = err.value.body["message"] if isinstance(err.value.body, dict) else str(err.value)
    assert "tokens" in message and "512 tokens this model attends to" in message and "max_tokens=64" in message


def test_refusals_name_the_setting(client):
    import openai

    user = [{"role": "user", "content": "hi"}]
    for kwargs, words in (
        ({"n": 2}, "n=2"),
        ({"max_tokens": 10_000}, "max_tokens=10000"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ):
        with pytest.raises(openai.BadRequestError, match=words.replace("[", r"\[").replace("]", r"\]")):
            client.chat.completions.create(**{"model": ep.model_id(client), "messages": user, **kwargs})
    with pytest.raises(openai.NotFoundError, match="is not served here"):
        client.chat.completions.create(model="gpt-4o", messages=user)


def test_stop_strings_cut_the_answer_in_both_modes(client, trained_run):
    question, answer = ep.single_turn_pairs(trained_run[2], 1)[0]
    word = answer.split()[2]
    expected = answer[: answer.index(word)].rstrip()
    messages = [{"role": "user", "content": question}]
    done = client.chat.completions.create(model=ep.model_id(client), messages=messages, max_tokens=96, stop=[word])
    assert done.choices[0].message.content == expected and done.choices[0].finish_reason == "stop"
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model=ep.model_id(client), messages=messages, max_tokens=96, stop=word, stream=True
        )
        if c.choices
    )
    assert streamed == expected


def test_a_short_max_tokens_finishes_for_length(client, trained_run):
    question, _ = ep.single_turn_pairs(trained_run[2], 1)[0]
    done = client.chat.completions.create(
        model=ep.model_id(client), max_tokens=3, messages=[{"role": "user", "content": question}]
    )
    assert done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 3


# ---- raw HTTP, as curl sends it --------------------------------------------------------------------------


def test_curl_style_requests_without_a_model_are_answered(server, trained_run):
    question, answer = ep.single_turn_pairs(trained_run[2], 1)[0]
    status, body = ep.post(
        f"{server.base}/v1/chat/completions",
        {"messages": [{"role": "user", "content": question}], "max_tokens": 96},
        server.key,
    )
    assert status == 200 and body["choices"][0]["message"] == {"role": "assistant", "content": answer}
    req = urllib.request.Request(
        f"{server.base}/v1/chat/completions",
        method="POST",
        data=json.dumps(
            {"messages": [{"role": "user", "content": question}], "max_tokens": 96, "stream": True}
        ).encode(),
        headers={"Authorization": f"Bearer {server.key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = [line for line in resp.read().decode().split("\n\n") if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    text = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == answer


def test_a_cancelled_completion_frees_the_model_at_the_next_token(model_dir):
    from serving import scoring

    s = scoring.Scorer(model_dir, max_new_tokens_limit=480)
    params = {"max_new_tokens": 480, "temperature": 2.0, "do_sample": True, "top_p": 1.0, "return_full_text": False}
    _, enc = s.encode([{"role": "user", "content": "zq xv"}], params)
    cancel, pieces = threading.Event(), []

    def on_text(piece):
        pieces.append(piece)
        if len(pieces) == 3:
            cancel.set()  # what the server does when the client goes away

    done = s.complete(enc, params, (), on_text, cancel)
    assert done["finish_reason"] == "cancelled" and done["completion_tokens"] < 20
    assert s.lock.acquire(blocking=False)  # the model is free again
    s.lock.release()


def test_a_whole_answer_the_client_hangs_up_on_stops_generating_on_both_routes(server):
    noise = [{"role": "user", "content": "zq xv"}]
    for path, body in (
        ("/v1/chat/completions", {"messages": noise, "max_tokens": 480, "temperature": 2.0}),
        ("/v1/responses", {"input": noise, "max_output_tokens": 480, "temperature": 2.0}),
    ):
        made = ep.abandoned_whole(f"{server.base}{path}", body, server.log, server.key)
        assert made < 240, path  # of 480: stopped at the hang-up, not at the end
        assert f'"POST {path}" 499' in server.log.read_text()  # the access log says the client closed it
    status, _ = ep.post(f"{server.base}/v1/chat/completions", {"messages": noise, "max_tokens": 4}, server.key)
    assert status == 200  # the model is free for the next request


def test_a_stream_the_client_abandons_stops_generating_and_frees_the_model(server):
    made = ep.abandoned(f"{server.base}/v1/chat/completions", server.key, server.log, 480)
    assert made < 100  # of 480: stopped at the hang-up, not at the end
    t0 = time.monotonic()
    status, body = ep.post(
        f"{server.base}/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
        server.key,
    )
    assert status == 200 and time.monotonic() - t0 < 30  # the model is free for the next request


# ---- the request contract, fuzzed without a model --------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 1000)), deadline=None)
@given(
    body=st.dictionaries(
        st.sampled_from(
            [
                "messages",
                "model",
                "max_tokens",
                "temperature",
                "top_p",
                "stop",
                "n",
                "stream",
                "stream_options",
                "tools",
                "response_format",
                "user",
            ]
        ),
        json_values,
        max_size=8,
    )
)
def test_any_json_body_is_parsed_or_refused_with_a_message(body):
    try:
        messages, params, opts = oa.parse_chat(body, 256, "m")
    except BadRequest as exc:
        assert str(exc)
        return
    assert messages and all(m["role"] in {"system", "user", "assistant"} for m in messages)
    assert 1 <= params["max_new_tokens"] <= 256 and isinstance(opts["stream"], bool)


def test_parse_maps_openai_settings_onto_the_scoring_ones():
    msgs, params, opts = oa.parse_chat(
        {
            "messages": [
                {"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
                {"role": "user", "content": "hi"},
            ],
            "max_tokens": 20,
            "temperature": 0.7,
            "top_p": 0.9,
            "stop": "\n",
            "presence_penalty": 0.5,
            "user": "someone",
        },
        256,
        "m",
    )
    assert msgs == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert params == {
        "max_new_tokens": 20,
        "temperature": 0.7,
        "do_sample": True,
        "top_p": 0.9,
        "return_full_text": False,
    }
    assert opts["stop"] == ["\n"] and opts["stream"] is False
    _, params, _ = oa.parse_chat({"messages": [{"role": "user", "content": "hi"}]}, 256, "m")
    assert params["temperature"] == 0.0 and params["do_sample"] is False and params["max_new_tokens"] == 64
    _, params, _ = oa.parse_chat(
        {"messages": [{"role": "user", "content": "hi"}], "n": None, "max_completion_tokens": None, "max_tokens": 50},
        256,
        "m",
    )
    assert params["max_new_tokens"] == 50  # explicit nulls, as some clients send them, count as absent


def test_incremental_text_adds_up_to_the_stripped_answer():
    from serving.scoring import Incremental

    words = ["  Hel", "lo", " wor", "ld", "  \n", "end", " "]
    decode = lambda ids: "".join(words[i] for i in ids)  # noqa: E731
    text = Incremental(decode)
    pieces = [text.push([i]) for i in range(len(words))]
    pieces.append(text.finish(range(len(words))))
    assert "".join(pieces) == decode(range(len(words))).strip() and text.sent == "Hello world  \nend"
    stop = Incremental(decode, ["wor"])
    pieces = [stop.push([i]) for i in range(len(words))] + [stop.finish(range(len(words)))]
    assert "".join(pieces) == "Hello" and stop.stopped
    # a stop longer than the answer so far: nothing of its prefix is handed out before it completes
    parts = ["U", "se", "r:", " hi"]
    short = Incremental(lambda ids: "".join(parts[i] for i in ids), ["User:"])
    pieces = [short.push([i]) for i in range(len(parts))] + [short.finish(range(len(parts)))]
    assert "".join(pieces) == "" == short.sent and short.stopped
