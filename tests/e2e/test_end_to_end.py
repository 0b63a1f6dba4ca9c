"""The user's path, as a user runs it: `python -m runner` on a fresh directory, offline, all five stages."""

import json
from pathlib import Path

import pytest

from runner.stages.data import resolve_path

from ..support import _endpoint  # noqa: F401  (a private Prompt flow home for this session)
from ..support._endpoint import post
from ..support.helpers import runner_cli

pytestmark = pytest.mark.slow  # every stage, a real server and Prompt flow


def sample_answer(question: str) -> str:
    for line in resolve_path("runner/samples/chat_sample.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["prompt"] == question:
            return next(m["content"] for m in row["messages"] if m["role"] == "assistant")
    raise KeyError(question)


def test_default_run_answers_through_prompt_flow_and_reuses_everything_on_rerun(tmp_path):
    r = runner_cli(cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run_dir = tmp_path / "outputs/default/local_tiny_sample"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {s for s, e in manifest["stages"].items() if e["status"] == "done"} == {
        "data",
        "train",
        "eval",
        "register",
        "deploy",
        "chat",
    }
    # the template audit before training, the eval after it: printed, and the figures on disk
    assert "[train] template audit passed on 76 rows" in r.stdout and "\u27e6" in r.stdout
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["tuned_nll"] < metrics["base_nll"] and metrics["tuned_stop_rate"] >= metrics["base_stop_rate"]
    assert f"[eval] held-out NLL (assistant tokens, 20 chats, {metrics['tokens']} tokens)" in r.stdout
    assert (run_dir / "eval" / "report.md").read_text().count("| fine-tuned | ") == metrics["samples"] == 20
    try:
        # the fine-tuned weights are the ones served: the flow answers training prompts with their training answers
        for pair in manifest["stages"]["chat"]["outputs"]["answers"]:
            assert pair["answer"].strip() == sample_answer(pair["question"])
            assert f"[chat] A: {pair['answer']}" in r.stdout
        dep = manifest["stages"]["deploy"]["outputs"]
        key = Path(dep["key_file"]).read_text().strip()
        question = manifest["stages"]["chat"]["outputs"]["answers"][0]["question"]
        payload = {
            "input_data": [question],
            "params": {"temperature": 0.7, "max_new_tokens": 128, "do_sample": False, "return_full_text": False},
        }
        status, body = post(dep["url"], payload, key)
        assert status == 200 and body[0].strip() == sample_answer(question)
        assert post(dep["url"], payload, "wrong-key")[0] == 401
        for name in ("spec.yaml", "manifest.json", "plan.txt"):
            path = run_dir / name
            assert not path.exists() or key not in path.read_text()

        again = runner_cli(cwd=tmp_path)  # nothing changed: reuse the model and the running endpoint
        assert again.returncode == 0, again.stderr[-3000:]
        for stage in ("data", "train", "eval", "register", "deploy"):
            assert f"[{stage}] skipped: inputs unchanged" in again.stdout
        assert json.loads((run_dir / "manifest.json").read_text())["stages"]["deploy"]["outputs"]["pid"] == dep["pid"]
    finally:
        down = runner_cli("stages=[teardown]", cwd=tmp_path)
        assert down.returncode == 0, down.stderr
