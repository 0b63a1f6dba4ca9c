"""The data stage on the shipped sample and on files with bad rows."""

import json
import time
from pathlib import Path

import pytest

from common.chats import ROLES
from runner.app import execute
from runner.errors import UserError

from ..support.helpers import SAMPLE, read_jsonl, run_data


def write_rows(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def good_row(i):
    return {
        "prompt": f"q{i}",
        "prompt_id": str(i),
        "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
    }


def test_shipped_sample_is_a_real_chat_dataset():
    rows = read_jsonl(SAMPLE)
    assert len(rows) >= 40
    assert all(set(r) == {"prompt", "prompt_id", "messages"} for r in rows)
    assert all(m["role"] in ROLES for r in rows for m in r["messages"])
    assert sum(sum(m["role"] == "user" for m in r["messages"]) > 1 for r in rows) >= 5  # multi-turn
    assert any(any(ord(c) > 127 for m in r["messages"] for c in m["content"]) for r in rows)  # non-ASCII


def test_sample_split_is_80_20_reproducible_and_keeps_the_schema(compose_spec, tmp_path):
    manifest = run_data(compose_spec(), tmp_path)
    out = manifest["stages"]["data"]["outputs"]
    train, test = read_jsonl(out["train_file"]), read_jsonl(out["test_file"])
    n = len(read_jsonl(SAMPLE))
    assert len(train) + len(test) == n and len(test) == -(-n * 2 // 10)
    assert {json.dumps(r) for r in train}.isdisjoint(json.dumps(r) for r in test)
    assert set(train[0]) == {"messages"}  # the chat alone: ultrachat's prompt and prompt_id are not trained on
    assert any(ord(c) > 127 for r in train + test for c in json.dumps(r, ensure_ascii=False))
    again = run_data(compose_spec("force=true"), tmp_path / "again")["stages"]["data"]["outputs"]
    assert read_jsonl(again["train_file"]) == train  # same seed, same split
    other = run_data(compose_spec("data.seed=7"), tmp_path / "other")["stages"]["data"]["outputs"]
    assert read_jsonl(other["train_file"]) != train


def test_rows_and_percent_slices(compose_spec, tmp_path):
    out = run_data(compose_spec("data.percent=null", "data.rows=20"), tmp_path)["stages"]["data"]["outputs"]
    assert (out["train_rows"], out["test_rows"]) == (16, 4)
    out = run_data(compose_spec("data.percent=50"), tmp_path / "b")["stages"]["data"]["outputs"]
    assert out["train_rows"] + out["test_rows"] == round(len(read_jsonl(SAMPLE)) / 2)


BAD_ROWS = [
    ("not json at all", "not JSON"),
    ({"messages": []}, "non-empty list"),
    ({"messages": "hello"}, "non-empty list"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    (
        {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]},
        "expected system, user or assistant",
    ),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}, "content must be a string"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}, "'role' and 'content'"),
    ({"messages": [{"": None}, {"role": "assistant", "content": "x"}]}, "'role' and 'content'"),  # found by fuzzing
    ({"messages": [{"role": "user", "content": "\ud800"}, {"role": "assistant", "content": "x"}]}, "lone surrogate"),
]


@pytest.mark.parametrize("bad,problem", BAD_ROWS)
def test_a_bad_row_is_named_by_file_row_and_problem(compose_spec, tmp_path, bad, problem):
    path = write_rows(tmp_path / "chats.jsonl", [good_row(0), good_row(1), bad] + [good_row(i) for i in range(2, 10)])
    with pytest.raises(UserError) as err:
        run_data(compose_spec(f"data.path={path}"), tmp_path)
    text = str(err.value)
    assert str(path) in text and "line 3:" in text and problem in text and "data.on_bad_row=skip" in text
    assert not (tmp_path / "run" / "data" / "train.jsonl").exists()  # nothing half-written
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["data"]["status"] == "failed"


def test_bad_rows_skipped_and_counted_when_asked(compose_spec, tmp_path):
    path = write_rows(tmp_path / "chats.jsonl", [good_row(i) for i in range(10)] + [b for b, _ in BAD_ROWS])
    out = run_data(compose_spec(f"data.path={path}", "data.on_bad_row=skip"), tmp_path)["stages"]["data"]["outputs"]
    assert out["skipped_rows"] == len(BAD_ROWS)
    assert out["train_rows"] + out["test_rows"] == 10


def test_missing_file_is_a_clear_error(compose_spec, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        run_data(compose_spec(f"data.path={tmp_path / 'nope.jsonl'}"), tmp_path)


def test_hub_dataset_offline_and_not_cached_says_how_to_provide_it(compose_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    t0 = time.time()
    with pytest.raises(UserError) as err:
        run_data(compose_spec("data=10rows"), tmp_path)
    assert time.time() - t0 < 30  # no stack of network retries
    text = str(err.value)
    assert "not in the local Hugging Face cache" in text and "data.source=file data.path=" in text


def test_output_changed_on_disk_is_redone(compose_spec, tmp_path):
    spec = compose_spec()
    out = run_data(spec, tmp_path)["stages"]["data"]["outputs"]
    Path(out["train_file"]).write_text("tampered\n")
    lines = []
    spec["stages"] = ["data"]
    execute(spec, tmp_path / "run", out=lines.append)
    assert "[data] done" in "\n".join(lines)
    assert read_jsonl(out["train_file"])[0]["messages"]


def test_editing_the_source_file_redoes_the_stage(compose_spec, tmp_path):
    path = write_rows(tmp_path / "chats.jsonl", [good_row(i) for i in range(10)])
    spec = compose_spec(f"data.path={path}")
    assert run_data(spec, tmp_path)["stages"]["data"]["outputs"]["train_rows"] == 8
    write_rows(path, [good_row(i) for i in range(20)])
    lines = []
    execute(spec, tmp_path / "run", out=lines.append)
    assert "[data] done" in "\n".join(lines)
    assert json.loads((tmp_path / "run/manifest.json").read_text())["stages"]["data"]["outputs"]["train_rows"] == 16


def test_a_folder_as_data_path_says_so(compose_spec, tmp_path):
    with pytest.raises(UserError, match="is a folder"):
        run_data(compose_spec(f"data.path={tmp_path}"), tmp_path)


def test_a_file_from_windows_tools_with_bom_and_crlf_is_read(compose_spec, tmp_path):
    lines = [json.dumps(good_row(i), ensure_ascii=False) for i in range(10)]
    path = tmp_path / "excel.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n\r\n")
    out = run_data(compose_spec(f"data.path={path}"), tmp_path)["stages"]["data"]["outputs"]
    assert (out["train_rows"], out["test_rows"], out["skipped_rows"]) == (8, 2, 0)
    assert all(r["messages"][0]["content"].startswith("q") for r in read_jsonl(out["train_file"]))


def test_a_line_that_is_not_utf8_is_one_bad_row(compose_spec, tmp_path):
    good = [json.dumps(good_row(i)).encode() for i in range(10)]
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b"\n".join(good[:4] + ['{"messages": "caf\xe9"}'.encode("latin-1")] + good[4:]) + b"\n")
    with pytest.raises(UserError) as err:
        run_data(compose_spec(f"data.path={path}"), tmp_path)
    assert "line 5: not UTF-8 (byte 0xe9 at column 18)" in str(err.value)
    out = run_data(compose_spec(f"data.path={path}", "data.on_bad_row=skip"), tmp_path / "b")["stages"]["data"][
        "outputs"
    ]
    assert out["skipped_rows"] == 1 and out["train_rows"] + out["test_rows"] == 10


def test_bad_rows_are_named_by_the_line_an_editor_shows(compose_spec, tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps(good_row(0)),
                "",
                "   ",
                json.dumps(good_row(1)),
                "{oops",
                *[json.dumps(good_row(i)) for i in range(2, 10)],
            ]
        )
        + "\n"
    )
    with pytest.raises(UserError) as err:
        run_data(compose_spec(f"data.path={path}"), tmp_path)
    assert "line 5: not JSON" in str(err.value)


def test_the_cli_refuses_a_non_utf8_file_with_exit_2_and_no_traceback(tmp_path):
    from ..support.helpers import runner_cli

    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join([json.dumps(good_row(i)).encode() for i in range(5)] + [b"\xff\xfe{}"]) + b"\n")
    r = runner_cli(f"data.path={path}", "stages=[data]", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "line 6: not UTF-8" in r.stderr, r.stderr


def test_the_trainer_reads_the_same_way(tmp_path):
    from trainer.chats import load
    from trainer.errors import TrainerInputError

    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(json.dumps(good_row(i)).encode() for i in range(3)) + b"\r\n")
    assert [r["messages"][1]["content"] for r in load(path)] == ["a0", "a1", "a2"]
    path.write_bytes(b"\n\n" + json.dumps(good_row(0)).encode() + b"\n\xc3\x28\n")
    with pytest.raises(TrainerInputError, match="line 4: not UTF-8"):
        load(path)
