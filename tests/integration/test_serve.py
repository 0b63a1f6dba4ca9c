"""The scoring module and the local endpoint server, on the session's fine-tuned tiny model."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ..support import _endpoint as ep
from ..support.helpers import NOT_IN_TRAINER, first_turn, imported_by


@pytest.fixture(scope="module")
def model_dir(trained_run):
    return trained_run[2]["stages"]["train"]["outputs"]["mlflow_model_dir"]


@pytest.fixture(scope="module")
def scoring(model_dir):
    from serving import scoring

    scoring.load(model_dir, max_new_tokens_limit=128)
    return scoring


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    s = ep.Server(model_dir, tmp_path_factory.mktemp("serve"), limit=128)
    yield s
    s.stop()


def score(scoring, *inputs, **params):
    return scoring.run(json.dumps({"input_data": list(inputs), "params": {"max_new_tokens": 96, **params}}))


# ---- scoring -------------------------------------------------------------------------------------------


def test_greedy_answers_to_training_prompts_are_the_training_answers(scoring, trained_run):
    pairs = ep.single_turn_pairs(trained_run[2], 4)
    assert score(scoring, *[q for q, _ in pairs], temperature=0.0) == [a for _, a in pairs]


def test_chat_message_input_gets_the_chat_template(scoring, trained_run):
    with_system = next(r for r in ep.training_rows(trained_run[2]) if r["messages"][0]["role"] == "system")
    prompt, answer = first_turn(with_system)
    assert score(scoring, prompt, do_sample=False) == [answer]
    question, answer = ep.single_turn_pairs(trained_run[2], 1)[0]
    # a plain string is the same as one user message
    assert score(scoring, question) == score(scoring, [{"role": "user", "content": question}]) == [answer]


def test_full_text_and_sampling_options(scoring, trained_run):
    question, answer = ep.single_turn_pairs(trained_run[2], 1)[0]
    full = score(scoring, question, return_full_text=True)[0]
    assert full.startswith("<|user|>\n" + question) and full.endswith(answer)
    sampled = score(scoring, question, do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=8)
    assert isinstance(sampled[0], str)
    # temperature 0 is greedy even when do_sample is true
    assert score(scoring, question, do_sample=True, temperature=0) == [answer]


def test_short_max_new_tokens_cuts_the_answer(scoring, trained_run):
    question, answer = ep.single_turn_pairs(trained_run[2], 1)[0]
    short = score(scoring, question, max_new_tokens=2)[0]
    assert answer.startswith(short) and len(short) < len(answer)


@pytest.mark.parametrize(
    "body,message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", 'JSON object with "input_data"'),
        ('{"input_data": "hi"}', "non-empty list"),
        ('{"input_data": []}', "non-empty list"),
        ('{"input_data": [""]}', "empty prompt"),
        ('{"input_data": [[{"role": "robot", "content": "hi"}]]}', r"input_data\[0\]\[0\]"),
        ('{"input_data": [42]}', r"input_data\[0\] must be a prompt string"),
        ('{"input_data": ["hi"], "params": {"max_new_tokens": 129}}', "over this endpoint's limit of 128"),
        ('{"input_data": ["hi"], "params": {"max_new_tokens": 0}}', "at least 1"),
        ('{"input_data": ["hi"], "params": {"temperature": -1}}', "temperature"),
        ('{"input_data": ["hi"], "params": {"do_sample": "yes"}}', "do_sample must be true or false"),
        ('{"input_data": ["hi"], "params": {"max_new_tokens": true}}', "max_new_tokens must be a number"),
        ('{"input_data": ["hi"], "params": {"beam": 4}}', "unknown params"),
        ('{"input_data": ["hi"], "extra": 1}', "unknown keys"),
    ],
)
def test_bad_bodies_are_refused_with_a_message(scoring, body, message):
    with pytest.raises(scoring.BadRequest, match=message):
        scoring.run(body)
    assert issubclass(scoring.BadRequest, ValueError)


def test_model_folder_is_found_below_the_azure_model_dir(model_dir, tmp_path):
    import shutil

    from common.files import find_mlflow_model

    nested = tmp_path / "phi3-chat" / "1" / "mlflow_model"
    shutil.copytree(model_dir, nested)
    assert find_mlflow_model(tmp_path) == nested
    with pytest.raises(FileNotFoundError, match="no MLmodel"):
        find_mlflow_model(tmp_path / "phi3-chat" / "1" / "mlflow_model" / "model")


# ---- the HTTP server -----------------------------------------------------------------------------------


def test_the_tutorials_payload_is_answered(server, trained_run):
    question, answer = ep.single_turn_pairs(trained_run[2], 1)[0]
    body = {
        "input_data": [question],
        "params": {"temperature": 0.7, "max_new_tokens": 128, "do_sample": True, "return_full_text": True},
    }
    status, result = ep.post(server.url, body, server.key)
    assert status == 200 and isinstance(result, list) and result[0].startswith("<|user|>\n" + question)
    status, result = ep.post(server.url, {"input_data": [question], "params": {"temperature": 0}}, server.key)
    assert (status, result) == (200, [answer])


def test_sixteen_concurrent_requests_all_get_their_own_answer(server, trained_run):
    pairs = ep.single_turn_pairs(trained_run[2], 16)
    assert len(pairs) == 16

    def ask(pair):
        return ep.post(server.url, {"input_data": [pair[0]], "params": {"max_new_tokens": 96}}, server.key)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(ask, pairs))
    assert results == [(200, [a]) for _, a in pairs]


def test_the_key_is_not_in_the_command_line_or_the_log(server):
    cmdline = open(f"/proc/{server.proc.pid}/cmdline", "rb").read().decode()
    assert server.key not in cmdline and server.key not in server.log.read_text()


def test_a_key_file_readable_by_others_is_refused(model_dir, tmp_path):
    import subprocess
    import sys

    from runner import REPO_ROOT

    key = tmp_path / "key"
    key.write_text("x" * 40)
    key.chmod(0o644)
    r = subprocess.run(
        [sys.executable, "-m", "serving.serve", "--model-dir", str(model_dir), "--key-file", str(key)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "chmod 600" in r.stderr


def test_scoring_and_server_import_nothing_from_runner_hydra_azure_or_promptflow(scoring):
    code = "import sys, serving.serve, serving.scoring as s; s.load(sys.argv[1])"
    assert imported_by(code, scoring._scorer.model_dir) & NOT_IN_TRAINER == set()


def test_a_bf16_model_is_served_in_float32_on_the_cpu(model_dir, tmp_path):
    """A GPU run saves bf16 weights; a CPU deployment (Standard_E4s_v3) generates in float32."""
    import mlflow
    import torch

    from serving import scoring as sc
    from trainer.tracking import save_model

    parts = mlflow.transformers.load_model(model_dir, return_type="components")
    save_model(parts["model"].to(torch.bfloat16), parts["tokenizer"], tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "model" / "config.json").read_text())["dtype"] == "bfloat16"
    scorer = sc.Scorer(tmp_path / "bf16")
    assert scorer.device == "cpu" and scorer.model.dtype == torch.float32


def test_a_huge_prompt_is_refused_at_once_while_a_normal_one_is_answered(server, trained_run):
    """200,000 characters used to hold the one model for minutes while /health said ok."""
    question, answer = ep.single_turn_pairs(trained_run[2], 1)[0]
    huge = {"input_data": ["why " * 50_000], "params": {"max_new_tokens": 64}}
    normal = {"input_data": [question], "params": {"max_new_tokens": 96}}
    timings = {}

    def send(name, body):
        t0 = time.monotonic()
        result = ep.post(server.url, body, server.key, timeout=60)
        timings[name] = time.monotonic() - t0
        return result

    with ThreadPoolExecutor(2) as pool:
        long_reply, short_reply = pool.submit(send, "huge", huge), pool.submit(send, "normal", normal)
        status, reply = long_reply.result()
        assert short_reply.result() == (200, [answer])
    assert status == 400 and "input_data[0] is" in reply["error"] and "over the 512 tokens" in reply["error"]
    n = int(reply["error"].split(" is ", 1)[1].split(" tokens")[0])
    assert n > 10_000  # the count is real
    assert timings["normal"] < 10 and timings["huge"] < 10


def test_a_prompt_that_fits_only_without_its_answer_is_refused_too(scoring):
    limit = scoring._scorer.context
    with pytest.raises(scoring.BadRequest, match=f"over the {limit} tokens") as err:
        scoring.run(json.dumps({"input_data": ["word " * (limit - 40)], "params": {"max_new_tokens": 64}}))
    assert "lower max_new_tokens" in str(err.value)


def test_generation_stops_at_the_request_timeout(model_dir):
    from serving.contract import Params
    from serving.scoring import Scorer, TimedOut

    scorer = Scorer(model_dir, max_new_tokens_limit=256, request_timeout_ms=1)
    t0 = time.monotonic()
    with pytest.raises(TimedOut, match="request timeout of 1 ms"):
        scorer.answers([[{"role": "user", "content": "tell me a long story"}]], Params(max_new_tokens=256).model_dump())
    assert time.monotonic() - t0 < 5


def test_the_local_server_answers_504_past_its_request_timeout(model_dir, tmp_path):
    from runner.local import server as local

    key = tmp_path / "k" / "key"
    local.new_key(key)
    ready, log = tmp_path / "ready.json", tmp_path / "log"
    proc = local.start(local.command(model_dir, key, ready, limit=256, timeout_ms=1), log)
    try:
        info = local.wait_ready(proc, "127.0.0.1", ready, log, timeout=120)
        status, reply = ep.post(
            f"http://127.0.0.1:{info['port']}/score",
            {"input_data": ["hi"], "params": {"max_new_tokens": 200}},
            key.read_text().strip(),
        )
        assert status == 504 and "request timeout of 1 ms" in reply["error"]
        # the OpenAI route: the same 504, in OpenAI's error shape
        status, reply = ep.post(
            f"http://127.0.0.1:{info['port']}/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 200},
            key.read_text().strip(),
        )
        assert status == 504 and "request timeout of 1 ms" in reply["error"]["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_a_request_without_max_new_tokens_is_never_refused_for_the_default():
    from serving.contract import Params, parse_body

    assert Params().checked(32)["max_new_tokens"] == 32 and Params().checked(256)["max_new_tokens"] == 64
    assert parse_body({"input_data": ["hi"]}, 32)[1]["max_new_tokens"] == 32
