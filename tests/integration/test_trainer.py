"""The fine-tuning stage: tiny Phi-3, TRL SFT, MLflow tracking and model logging, resume after a crash."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from runner import REPO_ROOT
from trainer.errors import TrainerInputError

from ..support._endpoint import single_turn_pairs, training_rows
from ..support.helpers import NOT_IN_TRAINER, first_turn, free_port, imported_by, read_jsonl, runner_cli

SHAPE = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    vocab_size=300,
    max_position_embeddings=128,
    seed=0,
)
CHATS = [
    {"messages": [{"role": "user", "content": f"question {i} ü"}, {"role": "assistant", "content": f"answer {i}"}]}
    for i in range(12)
]


def weights_digest(folder):
    return hashlib.sha256((Path(folder) / "model.safetensors").read_bytes()).hexdigest()


def test_tiny_model_is_phi3_built_deterministically_and_cached(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.tiny import build_or_load

    a = build_or_load(CHATS, SHAPE, tmp_path / "a")
    b = build_or_load(CHATS, SHAPE, tmp_path / "b")
    assert weights_digest(a) == weights_digest(b)
    assert build_or_load(CHATS, SHAPE, tmp_path / "a") == a  # cached by content
    assert build_or_load(CHATS, {**SHAPE, "seed": 1}, tmp_path / "a") != a
    model, tok = AutoModelForCausalLM.from_pretrained(a), AutoTokenizer.from_pretrained(a)
    assert type(model).__name__ == "Phi3ForCausalLM"
    for t in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"):
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1, t
    text = tok.apply_chat_template(CHATS[0]["messages"], tokenize=False)
    assert text == "<|user|>\nquestion 0 ü<|end|>\n<|assistant|>\nanswer 0<|end|>\n<|endoftext|>"
    prompt = tok.apply_chat_template(CHATS[0]["messages"][:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n")
    assert tok.decode(tok("日本一高い山は？ 🥞")["input_ids"]) == "日本一高い山は？ 🥞"  # byte-level: nothing is lost


def test_default_fine_tune_reproduces_training_answers(trained_run):
    import mlflow

    _, run_dir, manifest = trained_run
    out = manifest["stages"]["train"]["outputs"]
    parts = mlflow.transformers.load_model(out["mlflow_model_dir"], return_type="components")
    model, tok = parts["model"], parts["tokenizer"]
    train_rows = training_rows(manifest)
    for row in random.Random(0).sample(train_rows, 6):
        prompt, want = first_turn(row)
        ids = tok.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        got = model.generate(**ids, max_new_tokens=96, do_sample=False)[0][ids["input_ids"].shape[1] :]
        assert tok.decode(got, skip_special_tokens=True).strip() == want


def test_eval_loss_falls_well_below_its_value_before_training(trained_run):
    out = trained_run[2]["stages"]["train"]["outputs"]
    assert out["eval_loss"] < 0.8 * out["eval_loss_before"]
    assert out["train_loss"] < out["eval_loss_before"]


def test_mlflow_run_records_params_metrics_artifacts_and_a_servable_model(trained_run):
    import mlflow
    from mlflow.tracking import MlflowClient

    from trainer import tracking

    spec, run_dir, manifest = trained_run
    out = manifest["stages"]["train"]["outputs"]
    assert out["tracking_uri"].startswith("sqlite:///") and Path(out["tracking_uri"][10:]).is_file()
    client = MlflowClient(out["tracking_uri"])
    run = client.get_run(out["run_id"])
    assert run.data.params["train.learning_rate"] == str(spec["train"]["learning_rate"])
    assert run.data.params["model.source"] == "tiny"
    assert not any(k.startswith("azure.") for k in run.data.params)
    assert {"loss", "eval_loss_before", "final_eval_loss", "final_tokens_per_s"} <= set(run.data.metrics)
    assert len(client.get_metric_history(out["run_id"], "loss")) >= 5  # per logging step
    names = {a.path for a in client.list_artifacts(out["run_id"])}
    assert {"spec.yaml", "loss.png"} <= names
    assert Path(out["loss_plot"]).read_bytes()[:4] == b"\x89PNG"
    tracking.point_at(out["tracking_uri"])
    info = mlflow.models.get_model_info(out["model_uri"])
    assert "transformers" in info.flavors
    assert {p.name for p in info.signature.params.params} == {
        "max_new_tokens",
        "temperature",
        "do_sample",
        "top_p",
        "return_full_text",
    }
    reqs = (Path(out["mlflow_model_dir"]) / "requirements.txt").read_text()
    assert "torch==2.13.0" in reqs and "torchvision" not in reqs
    # the params schema is what makes serving honour per-request settings
    model = mlflow.pyfunc.load_model(out["model_uri"])
    # MLflow's own consumers get the chat format around a plain prompt, and only the answer back
    question, answer = single_turn_pairs(manifest, 1)[0]
    assert model.predict([question], params={"max_new_tokens": 96}) == [answer]
    short = model.predict([question], params={"max_new_tokens": 2, "do_sample": False})
    assert answer.startswith(short[0]) and len(short[0]) < len(answer)


def test_mlflow_models_serve_gives_chat_answers_to_plain_prompts(trained_run, tmp_path):
    """MLflow's own scoring server on the logged model: a string prompt is answered as a chat turn."""
    import urllib.request

    out = trained_run[2]["stages"]["train"]["outputs"]
    question, answer = single_turn_pairs(trained_run[2], 1)[0]
    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    log = tmp_path / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [
                str(mlflow_cli),
                "models",
                "serve",
                "-m",
                out["mlflow_model_dir"],
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "MLFLOW_TRACKING_URI": out["tracking_uri"],  # it execs uvicorn
                "PATH": f"{mlflow_cli.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            },
            start_new_session=True,
        )
    try:

        def invoke(params):
            body = json.dumps({"inputs": [question], "params": params}).encode()
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=60) as resp:
                return json.loads(resp.read())["predictions"]

        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
        assert invoke({"max_new_tokens": 96}) == [answer]
        # the tutorial's settings, full text included
        full = invoke({"temperature": 0.7, "max_new_tokens": 128, "do_sample": True, "return_full_text": True})
        assert question in full[0]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def small_spec(trained_spec, **train):
    spec = json.loads(json.dumps(trained_spec))
    spec["model"]["tiny"] = dict(SHAPE)
    spec["train"].update({"num_train_epochs": 2, "logging_steps": 1, "save_steps": 1000, **train})
    return spec


def fit(spec, tmp_path, train_rows, eval_rows=None):
    from trainer.fit import train

    for name, rows in (("train.jsonl", train_rows), ("eval.jsonl", eval_rows or CHATS[:3])):
        (tmp_path / name).write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    return train(
        spec,
        tmp_path / "spec.yaml",
        tmp_path / "train.jsonl",
        tmp_path / "eval.jsonl",
        tmp_path / "out",
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        cache_dir=tmp_path / "cache",
        log=lambda *_: None,
    )


@pytest.mark.parametrize("packing,strategy", [(True, "bfd"), (True, "wrapped"), (False, "bfd")])
def test_packed_and_unpacked_paths_train_and_count_truncation(trained_run, tmp_path, packing, strategy):
    long_chat = {
        "messages": [
            {"role": "user", "content": "tell me everything " * 40},
            {"role": "assistant", "content": "that is a long story " * 20},
        ]
    }
    spec = small_spec(trained_run[0], packing=packing, packing_strategy=strategy, max_length=48)
    summary = fit(spec, tmp_path, CHATS + [long_chat])
    assert summary["rows_truncated"] == 1
    assert summary["steps"] > 0 and (Path(summary["mlflow_model_dir"]) / "MLmodel").is_file()


def test_lora_adapters_are_merged_before_logging(trained_run, tmp_path):
    lora = {"enabled": True, "r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "all-linear"}
    summary = fit(small_spec(trained_run[0], lora=lora), tmp_path, CHATS)
    files = {p.name for p in Path(summary["mlflow_model_dir"]).rglob("*")}
    assert "adapter_config.json" not in files and "model.safetensors" in files


def no_model_logged(tmp_path):
    db = tmp_path / "mlflow.db"
    if not db.exists():
        return True
    from mlflow.tracking import MlflowClient

    return not MlflowClient(f"sqlite:///{db}").search_logged_models(experiment_ids=["0", "1"])


@pytest.mark.parametrize(
    "rows,message",
    [
        ([], "no chats in the file"),
        ([{"messages": [{"role": "user", "content": "hi"}]}] * 3, "no assistant turn"),
    ],
)
def test_bad_training_files_fail_clearly_and_log_nothing(trained_run, tmp_path, rows, message):
    with pytest.raises(TrainerInputError, match=message):
        fit(small_spec(trained_run[0]), tmp_path, rows)
    assert no_model_logged(tmp_path) and not (tmp_path / "out").exists()


def test_model_path_that_does_not_exist(trained_run, tmp_path):
    spec = small_spec(trained_run[0])
    spec["model"].update(source="hub", id=str(tmp_path / "no-such-model"), tiny=None)
    with pytest.raises(TrainerInputError, match="is not a model folder"):
        fit(spec, tmp_path, CHATS)
    assert no_model_logged(tmp_path)


def test_hub_model_without_local_weights_is_one_clear_line(trained_run, tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(REPO_ROOT)}
    spec = small_spec(trained_run[0])
    spec["model"].update(source="hub", id="microsoft/Phi-3-mini-4k-instruct", tiny=None)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CHATS))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer",
            "--spec",
            str(tmp_path / "spec.yaml"),
            "--train-file",
            str(tmp_path / "t.jsonl"),
            "--eval-file",
            str(tmp_path / "t.jsonl"),
            "--output-dir",
            str(tmp_path / "out"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "not available locally" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_model_another_process_put_in_the_cache_first_is_the_one_used(tmp_path, monkeypatch):
    """The loser of a build race (a second torchrun rank, a second run sharing the cache) uses the winner's."""
    import shutil

    from trainer import tiny

    winner = tiny.build_or_load(CHATS, SHAPE, tmp_path / "elsewhere")
    for name in ("rename", "replace"):
        real = getattr(os, name)

        def another_renames_first(src, dst, real=real):  # the other process wins by a moment
            if Path(dst).name == winner.name and not Path(dst).exists():
                shutil.copytree(winner, dst)
            return real(src, dst)

        monkeypatch.setattr(os, name, another_renames_first)
    got = tiny.build_or_load(CHATS, SHAPE, tmp_path / "cache")
    assert got == tmp_path / "cache" / winner.name and weights_digest(got) == weights_digest(winner)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [winner.name]  # its own copy removed


@pytest.mark.slow
def test_two_processes_building_the_tiny_model_at_once_both_train_on_one_model(tmp_path):
    code = (
        "import sys, time, torch; from pathlib import Path; from trainer.tiny import build_or_load; "
        "from transformers import AutoModelForCausalLM, AutoTokenizer; "
        f"chats = {CHATS!r}; shape = {SHAPE!r}; cache = Path(sys.argv[1]); start = float(sys.argv[2]); "
        "time.sleep(max(0, start - time.time())); folder = build_or_load(chats, shape, cache); "
        "model = AutoModelForCausalLM.from_pretrained(folder); tok = AutoTokenizer.from_pretrained(folder); "
        "batch = tok(['question 1 ü answer 1'], return_tensors='pt'); "
        "loss = model(**batch, labels=batch['input_ids']).loss; loss.backward(); "
        "print(folder.name, float(loss))"
    )
    start = str(time.time() + 8)  # both import torch first, then build at the same moment
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / "cache"), start],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    (name_a, loss_a), (name_b, loss_b) = (o.split() for o, _ in outs)
    assert name_a == name_b and loss_a == loss_b  # one model, the same for both
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [name_a]  # no temporary folder left


def test_trainer_entry_point_imports_nothing_from_runner_hydra_or_azure():
    code = "import trainer.__main__, trainer.fit, trainer.tiny, trainer.tracking"
    assert imported_by(code) & NOT_IN_TRAINER == set()


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_checkpoint(tmp_path):
    args = ["stages=[data,train]", "train.save_steps=40", "train.num_train_epochs=30"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        cwd=tmp_path,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run_dir = tmp_path / "outputs/default/local_tiny_sample"
    deadline = time.time() + 240
    while time.time() < deadline and not list(run_dir.glob("train/*/checkpoints/checkpoint-80")):
        time.sleep(0.2)
    assert proc.poll() is None, "training finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["train"]["status"] == "running"  # killed: never marked done
    r = runner_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming from" in r.stdout and "checkpoint-" in r.stdout
    assert "[data] skipped" in r.stdout
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["train"]["status"] == "done"
    assert manifest["stages"]["train"]["outputs"]["steps"] > 80


@pytest.mark.slow
def test_force_retrains_from_scratch_instead_of_resuming_the_finished_run(tmp_path):
    args = ["stages=[data,train]", "train.num_train_epochs=2", "train.save_steps=10"]  # leaves checkpoint-20
    first = runner_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    again = runner_cli(*args, "force=true", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from" not in again.stdout and "eval loss before training" in again.stdout
    manifest = json.loads((tmp_path / "outputs/default/local_tiny_sample/manifest.json").read_text())
    out = manifest["stages"]["train"]["outputs"]
    assert out["steps"] == 20 and out["train_loss"] > 0.5


def test_the_loss_covers_assistant_turns_only_with_a_template_that_renders_as_the_models(trained_run):
    """TRL swaps in the training variant of Phi-3's template: same text, assistant spans marked for the loss."""
    from transformers import AutoTokenizer
    from trl.chat_template_utils import get_training_chat_template

    out = trained_run[2]["stages"]["train"]["outputs"]
    assert trained_run[0]["train"]["assistant_only_loss"] is True  # the default of both recipes
    tok = AutoTokenizer.from_pretrained(Path(out["mlflow_model_dir"]) / "components" / "tokenizer")
    training = get_training_chat_template(tok)
    assert training and "generation" in training and training != tok.chat_template
    rows = read_jsonl(trained_run[2]["stages"]["data"]["outputs"]["test_file"])
    assert any(r["messages"][0]["role"] == "system" for r in rows)
    for row in rows:
        msgs = row["messages"]
        assert tok.apply_chat_template(msgs, tokenize=False) == tok.apply_chat_template(
            msgs, tokenize=False, chat_template=training
        )
        enc = tok.apply_chat_template(
            msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, chat_template=training
        )
        learned = tok.decode([t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m])
        answers = "".join(m["content"] + "<|end|>\n" for m in msgs if m["role"] == "assistant")
        assert learned == answers + (tok.eos_token if msgs[-1]["role"] == "assistant" else "")
        assert "<|user|>" not in learned and "<|assistant|>" not in learned and "<|system|>" not in learned


def test_pointing_mlflow_somewhere_does_not_export_it_to_the_environment(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; a sweep's next point would take it for the user's."""
    import mlflow

    from trainer import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'a.db'}"
    tracking.point_at(uri, registry=True)
    assert mlflow.get_tracking_uri() == uri and mlflow.get_registry_uri() == uri
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    assert tracking.tracking_uri(None, tmp_path / "run") == f"sqlite:///{(tmp_path / 'run').resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")  # the user's choice stays
    tracking.point_at(uri)
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"


def test_a_checkpoint_cut_short_while_saving_is_passed_over(tmp_path):
    """A kill during the Trainer's save leaves checkpoint-N without (or with half of) trainer_state.json, its last file."""
    from trainer.files import last_complete_checkpoint

    for step, state in ((40, '{"global_step": 40}'), (80, None), (120, '{"global_st'), (9, "{}")):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-x").mkdir()
    said = []
    assert last_complete_checkpoint(tmp_path, said.append) == str(tmp_path / "checkpoint-40")  # 40 > 9: by number
    assert said == [
        "[train] checkpoint-120 was not saved completely (interrupted); it is passed over",
        "[train] checkpoint-80 was not saved completely (interrupted); it is passed over",
    ]
    assert last_complete_checkpoint(tmp_path / "none", said.append) is None
