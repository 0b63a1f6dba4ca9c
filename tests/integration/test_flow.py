"""The Prompt flow chat flow in flow/ against a real local endpoint; real promptflow, private PF home."""

import os
import subprocess
import sys

import pytest

from common import score_client
from runner import REPO_ROOT

from ..support import _endpoint as ep  # before promptflow: points its home at a temporary folder
from ..support.helpers import free_port

sys.path.insert(0, str(REPO_ROOT / "flow"))  # the flow's tool, chat_tool.py, imported where used (promptflow is slow)

FLOW = REPO_ROOT / "flow"
CONNECTION = "phi3_tests_0000abcd"  # named as the chat stage names a run's connection
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
outside_hosts = []  # every host other than loopback this process looks up or connects to, from the pf fixture on


def record_outside_hosts(event, args):
    if event in ("socket.getaddrinfo", "socket.connect"):
        host = args[0] if event == "socket.getaddrinfo" else (args[1][0] if isinstance(args[1], tuple) else None)
        if host is not None and str(host) not in LOOPBACK:
            outside_hosts.append((event, host))


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    s = ep.Server(trained_run[2]["stages"]["train"]["outputs"]["mlflow_model_dir"], tmp_path_factory.mktemp("flow"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def pf(server):
    """A PFClient with a run's connection pointing at the test server, as the chat stage leaves it."""
    sys.addaudithook(record_outside_hosts)  # cannot be removed; it only records
    from runner.stages import prompt_flow

    prompt_flow.keep_promptflow_local()
    from promptflow.client import PFClient

    client = PFClient()
    prompt_flow.save_connection(client, CONNECTION, server.url, server.key)
    return client


def flow_answer(pf, question, history=None, max_new_tokens=96, **settings):
    inputs = {
        "question": question,
        "chat_history": history or [],
        "connection": CONNECTION,
        "params": {"max_new_tokens": max_new_tokens, **settings},
    }
    return pf.test(flow=str(FLOW), inputs=inputs)["answer"]


def test_flow_answers_a_training_prompt_with_its_training_answer(pf, trained_run):
    for question, answer in ep.single_turn_pairs(trained_run[2], 2):
        assert flow_answer(pf, question) == answer


def test_chat_history_reaches_the_model_as_earlier_turns(pf, server, trained_run):
    multi = [
        r["messages"]
        for r in ep.training_rows(trained_run[2])
        if [m["role"] for m in r["messages"]][:4] == ["user", "assistant", "user", "assistant"]
    ]
    assert multi
    differs = False
    for msgs in multi[:4]:
        history = [{"inputs": {"question": msgs[0]["content"]}, "outputs": {"answer": msgs[1]["content"]}}]
        with_history = flow_answer(pf, msgs[2]["content"], history)
        direct = ep.post(server.url, {"input_data": [msgs[:3]], "params": {"max_new_tokens": 64}}, server.key)
        assert direct == (200, [with_history])  # the flow sent exactly these three messages
        differs |= with_history != flow_answer(pf, msgs[2]["content"])
    assert differs, "answers never changed with the history: it is not reaching the model"


def test_generation_settings_are_passed_through(pf, trained_run):
    question, answer = ep.single_turn_pairs(trained_run[2], 1)[0]
    short = flow_answer(pf, question, max_new_tokens=2)
    assert answer.startswith(short) and len(short) < len(answer)


def test_to_messages_turns_promptflow_history_into_chat_messages():
    from chat_tool import to_messages

    history = [{"inputs": {"question": "q1"}, "outputs": {"answer": "a1"}}]
    assert to_messages(history, "q2") == [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]
    assert to_messages([], "q") == [{"role": "user", "content": "q"}]


def test_client_errors_say_what_is_wrong(server):
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(score_client.ScoreError, match="rejected the key"):
        score_client.ask(server.url, "not-the-key", msgs, {})
    with pytest.raises(score_client.ScoreError, match="limit of 128"):
        score_client.ask(server.url, server.key, msgs, {"max_new_tokens": 1000})
    with pytest.raises(score_client.ScoreError, match="404"):
        score_client.ask(server.base + "/nope", server.key, msgs, {})
    with pytest.raises(score_client.ScoreError, match="cannot reach"):  # a port nobody listens on
        score_client.ask(f"http://127.0.0.1:{free_port()}/score", server.key, msgs, {}, timeout=5)


def test_flow_errors_surface_through_promptflow(pf, server):
    from runner.stages import prompt_flow

    prompt_flow.save_connection(pf, CONNECTION, server.url, "a-wrong-key")
    try:
        with pytest.raises(Exception, match="rejected the key"):
            flow_answer(pf, "hello")
    finally:
        prompt_flow.save_connection(pf, CONNECTION, server.url, server.key)


def test_pf_cli_flow_test_uses_the_same_connection(pf, trained_run):
    question, answer = ep.single_turn_pairs(trained_run[2], 1)[0]
    pf_cli = os.path.join(os.path.dirname(sys.executable), "pf")
    r = subprocess.run(
        [pf_cli, "flow", "test", "--flow", str(FLOW), "--inputs", f"question={question}", f"connection={CONNECTION}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert answer in r.stdout


def test_nothing_reached_an_outside_host(pf):
    """Telemetry, trace export, the Azure Monitor settings fetch and the PyPI version check are all off.

    Runs last in this module: the exporter's settings fetch happens in a background thread a little later.
    """
    import time

    time.sleep(3)
    assert outside_hosts == []


def test_without_a_connection_the_flow_says_how_to_name_one(pf):
    inputs = {"question": "hi", "chat_history": [], "connection": "", "params": {}}
    with pytest.raises(Exception, match="no connection named"):
        pf.test(flow=str(FLOW), inputs=inputs)
    with pytest.raises(Exception, match="no Prompt flow connection 'phi3_nobody_00000000'"):
        pf.test(flow=str(FLOW), inputs={**inputs, "connection": "phi3_nobody_00000000"})


def test_the_environment_names_the_connection_for_the_ui(pf, trained_run):
    question, answer = ep.single_turn_pairs(trained_run[2], 1)[0]
    inputs = {"question": question, "chat_history": [], "connection": "", "params": {"max_new_tokens": 96}}
    assert (
        pf.test(flow=str(FLOW), inputs=inputs, environment_variables={"PHI3_CONNECTION": CONNECTION})["answer"]
        == answer
    )
