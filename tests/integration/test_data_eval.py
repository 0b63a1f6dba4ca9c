"""The eval set: the tutorial's 80/20 of its slice in a single run, one fixed set for every point of a sweep.

The hub path runs for real through datasets.load_dataset, on a local folder laid out like
HuggingFaceH4/ultrachat_200k (data/train_sft-*.parquet and data/test_sft-*.parquet, with its prompt, prompt_id and
messages columns): data.dataset may name such a folder.
"""

import hashlib
import json

import pytest

from runner.spec.validate import problems

from ..support.helpers import SAMPLE, read_jsonl, run_data, runner_cli

N_TRAIN_SFT = 80  # of the sample's 96 chats; the other 16 are test_sft


@pytest.fixture(scope="module")
def ultrachat_folder(tmp_path_factory):
    import datasets

    rows = read_jsonl(SAMPLE)
    for r in rows:  # ultrachat's columns: prompt (the first user turn), its sha256, the chat
        r["prompt"] = next(m["content"] for m in r["messages"] if m["role"] == "user")
        r["prompt_id"] = hashlib.sha256(r["prompt"].encode()).hexdigest()
    folder = tmp_path_factory.mktemp("ultrachat_200k")
    (folder / "data").mkdir()
    for split, part in (("train_sft", rows[:N_TRAIN_SFT]), ("test_sft", rows[N_TRAIN_SFT:])):
        datasets.Dataset.from_list(part).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def outputs(manifest):
    return manifest["stages"]["data"]["outputs"]


def test_a_fixed_eval_set_is_the_same_rows_for_every_slice_of_a_file(compose_spec, tmp_path):
    runs = {
        pct: outputs(run_data(compose_spec("data.eval=fixed", f"data.percent={pct}"), tmp_path / str(pct)))
        for pct in (25, 50, 100)
    }
    assert len({o["eval"]["sha256"] for o in runs.values()}) == 1
    assert {o["eval"]["mode"] for o in runs.values()} == {"fixed"}
    test = read_jsonl(runs[25]["test_file"])
    n = len(read_jsonl(SAMPLE))
    assert len(test) == -(-n * 2 // 10)  # test_size of the whole file, held out before the slice
    trains = {pct: read_jsonl(o["train_file"]) for pct, o in runs.items()}
    assert [len(t) for t in trains.values()] == [round((n - len(test)) * p / 100) for p in (25, 50, 100)]
    assert trains[50][: len(trains[25])] == trains[25] and trains[100][: len(trains[50])] == trains[50]  # nested
    assert not {json.dumps(r) for r in trains[100]} & {json.dumps(r) for r in test}
    assert read_jsonl(runs[100]["pool_file"]) == trains[100]
    # at 100 % the fixed set is the tutorial's own 80/20 split of the whole file
    split = outputs(run_data(compose_spec("data.eval=split"), tmp_path / "split"))
    assert split["eval"]["sha256"] == runs[100]["eval"]["sha256"] and "pool_file" not in split


def test_the_tutorials_split_follows_the_slice_and_a_single_run_keeps_it(compose_spec, tmp_path):
    half = outputs(run_data(compose_spec("data.percent=50"), tmp_path / "a"))  # data.eval=auto, a single run
    whole = outputs(run_data(compose_spec("data.percent=100"), tmp_path / "b"))
    assert half["eval"]["mode"] == whole["eval"]["mode"] == "split"
    assert half["eval"]["sha256"] != whole["eval"]["sha256"]
    assert half["train_rows"] + half["test_rows"] == round(len(read_jsonl(SAMPLE)) / 2)


def test_eval_rows_sizes_the_held_out_set(compose_spec, tmp_path):
    out = outputs(run_data(compose_spec("data.eval=fixed", "data.eval_rows=7", "data.percent=50"), tmp_path))
    assert out["test_rows"] == 7 and out["train_rows"] == round((len(read_jsonl(SAMPLE)) - 7) / 2)


def test_a_file_has_no_eval_split(compose_spec):
    found = problems(compose_spec("data.eval=fixed", "data.eval_split=test_sft"))
    assert any(p.startswith("data.eval_split: a JSONL file has no splits") for p in found)


def test_a_fixed_eval_set_that_leaves_nothing_to_train_on_is_refused_before_anything_runs(compose_spec):
    n = len(read_jsonl(SAMPLE))
    found = problems(compose_spec("data.eval=fixed", f"data.eval_rows={n}"))
    assert any(p.startswith(f"data.eval_rows: chat_sample.jsonl has {n} rows; holding {n} out") for p in found), found
    found = problems(compose_spec("data.eval=fixed", "data.percent=0.5"))  # 0.5 % of the 76 rows left: 0 rows
    assert any(p.startswith("data.percent: 0.5% of the 76 rows of chat_sample.jsonl") for p in found), found
    assert not problems(compose_spec("data.eval=fixed", "data.percent=2"))


def test_evaluating_on_the_split_that_trains_is_refused(compose_spec):
    found = problems(compose_spec("data=1pct", "data.eval=fixed", "data.eval_split=train_sft"))
    assert any(p.startswith("data.eval_split: evaluating on train_sft, the split the slice trains on") for p in found)


def test_the_hub_path_slices_a_train_split_and_splits_it_80_20(compose_spec, tmp_path, ultrachat_folder):
    out = outputs(run_data(compose_spec("data=1pct", f"data.dataset={ultrachat_folder}", "data.percent=10"), tmp_path))
    assert out["source"] == f"{ultrachat_folder}:train_sft[:10%]"
    assert (out["train_rows"], out["test_rows"]) == (6, 2)  # 10 % of 80 rows, then 80/20
    rows = read_jsonl(out["train_file"]) + read_jsonl(out["test_file"])
    assert all(set(r) == {"messages"} for r in rows)  # prompt and prompt_id are not trained on
    firsts = {json.dumps(r["messages"]) for r in read_jsonl(SAMPLE)[:8]}
    assert {json.dumps(r["messages"]) for r in rows} == firsts  # the first 10 %, as datasets slices it
    ten = outputs(run_data(compose_spec("data=10rows", f"data.dataset={ultrachat_folder}"), tmp_path / "ten"))
    assert (ten["source"], ten["train_rows"], ten["test_rows"]) == (f"{ultrachat_folder}:train_sft[:10]", 8, 2)


def test_the_hub_path_evaluates_on_test_sft_when_fixed(compose_spec, tmp_path, ultrachat_folder):
    spec = compose_spec(
        "data=1pct", f"data.dataset={ultrachat_folder}", "data.percent=10", "data.eval=fixed", "data.eval_rows=5"
    )
    out = outputs(run_data(spec, tmp_path))
    assert (out["train_rows"], out["test_rows"]) == (8, 5)  # the whole slice trains; test_sft[:5] evaluates
    test = read_jsonl(out["test_file"])
    assert [r["messages"] for r in test] == [r["messages"] for r in read_jsonl(SAMPLE)[N_TRAIN_SFT : N_TRAIN_SFT + 5]]
    assert out["eval"]["from"].startswith(f"{ultrachat_folder}:test_sft[:5]")
    # the tiny model's tokenizer corpus is the eval split, whatever the slice: one base model for every point
    assert read_jsonl(out["pool_file"]) == test


def test_a_hub_sweep_evaluates_every_point_on_test_sft(tmp_path, ultrachat_folder):
    r = runner_cli(
        "-m", "data=1pct", f"data.dataset={ultrachat_folder}", "data.percent=10,50", "stages=[data]", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr[-3000:]
    runs = {
        p.parent.name.rsplit(",", 1)[1]: json.loads(p.read_text())["stages"]["data"]["outputs"]
        for p in (tmp_path / "outputs/default/local_tiny_1pct").glob("*/manifest.json")
    }
    assert set(runs) == {"data.percent=10", "data.percent=50"}  # one folder per point, the path made flat
    assert [runs[f"data.percent={p}"]["train_rows"] for p in (10, 50)] == [8, 40]
    assert {o["test_rows"] for o in runs.values()} == {96 - N_TRAIN_SFT}  # all of test_sft (under eval_rows=500)
    assert len({o["eval"]["sha256"] for o in runs.values()}) == 1
    assert "| data.percent=10 | data done | 8 | 16 |" in (tmp_path / "outputs/default/sweep.md").read_text()
