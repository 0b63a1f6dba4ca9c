"""model=tiny_phi4mini, Phi-4-mini's shape, template, special tokens and pad, through the whole pipeline: the
template audit and eval, the registered name of its own, then the training questions answered on every chat route:
Prompt flow (the chat stage, /score), the OpenAI chat completions (the openai client, streamed and not), the chat
page's API."""

import json
from pathlib import Path

import pytest

from ..support import _endpoint as ep  # before promptflow: points its home at a temporary folder
from ..support.helpers import runner_cli
from .test_chat_page import split_url, start_page, stop_page

pytestmark = pytest.mark.slow
MODEL = "model=tiny_phi4mini"


@pytest.fixture(scope="module")
def deployed(trained_phi4mini):
    """The session's tiny_phi4mini fine-tune taken on through eval, register, deploy and chat by the runner's CLI;
    (root, run_dir, the CLI's result, manifest); torn down afterwards."""
    run_dir = trained_phi4mini[1]
    root = run_dir.parents[2]
    r = runner_cli(MODEL, cwd=root)
    try:
        yield root, run_dir, r, json.loads((run_dir / "manifest.json").read_text())
    finally:
        runner_cli(MODEL, "stages=[teardown]", cwd=root)


def test_it_trains_with_its_own_template_and_pad_so_the_stop_token_is_learnt(trained_phi4mini):
    spec, run_dir, manifest = trained_phi4mini
    folder = Path(manifest["stages"]["train"]["outputs"]["mlflow_model_dir"])
    audit = next(run_dir.rglob("template_audit.txt")).read_text()
    # no newlines; the answer and its <|end|> carry loss, the eos after the chat and every prompt token do not
    assert "<|user|>" in audit and "<|end|><|assistant|>\u27e6" in audit and "<|end|>\u27e7<|endoftext|>" in audit
    tokenizer = json.loads((folder / "components" / "tokenizer" / "tokenizer_config.json").read_text())
    assert tokenizer["pad_token"] == "<|pad|>" and tokenizer["eos_token"] == "<|endoftext|>"
    config = json.loads((folder / "model" / "config.json").read_text())
    generation = json.loads((folder / "model" / "generation_config.json").read_text())
    assert config["tie_word_embeddings"] and config["partial_rotary_factor"] == 0.75
    assert config["num_attention_heads"] == 3 * config["num_key_value_heads"]
    assert config["pad_token_id"] == generation["pad_token_id"] not in generation["eos_token_id"]
    assert spec["register"]["model_name"] == "phi4-chat-tiny-phi4mini"


def test_every_chat_route_answers_the_training_questions(deployed):
    root, run_dir, r, manifest = deployed
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["tuned_nll"] < metrics["base_nll"] and metrics["tuned_stop_rate"] > metrics["base_stop_rate"]
    assert "[register] phi4-chat-tiny-phi4mini version 1" in r.stdout
    answers = {q: a for q, a in ep.single_turn_pairs(manifest, 100)}
    # Prompt flow, through /score: the chat stage's answers are the training answers
    said = manifest["stages"]["chat"]["outputs"]["answers"]
    assert said and all(p["answer"].strip() == answers[p["question"]] for p in said)
    # the OpenAI routes, with the openai client and the endpoint's key
    from openai import OpenAI

    dep = manifest["stages"]["deploy"]["outputs"]
    client = OpenAI(base_url=dep["openai_base_url"], api_key=Path(dep["key_file"]).read_text().strip())
    question, answer = ep.single_turn_pairs(manifest, 1)[0]
    messages = [{"role": "user", "content": question}]
    served = [m.id for m in client.models.list()]
    assert served == ["phi4-chat-tiny-phi4mini:1"]
    reply = client.chat.completions.create(model=served[0], messages=messages)
    assert reply.choices[0].message.content == answer and reply.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model=served[0], messages=messages, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == answer
    # the chat page's API, which the page's script calls
    proc, url, lines = start_page(root, MODEL, "stages=[chat]")
    try:
        assert url, "".join(lines)[-3000:]
        base, token = split_url(url)
        status, body = ep.post(base + "v1/chat/completions", {"messages": messages}, token)
        assert status == 200 and body["choices"][0]["message"]["content"] == answer, body
        assert body["model"] == "phi4-chat-tiny-phi4mini:1"
    finally:
        stop_page(proc)
