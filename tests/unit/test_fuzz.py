"""Property tests of the two parsers that take outside input: the data stage's JSONL reader and row checker, and
the scoring request parser. Either they return what they promise, or they raise the project's own clear error
(UserError / TrainerInputError / BadRequest): never anything else, whatever the bytes.
"""

import json
import math
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from common.chats import ROLES, row_problem
from runner.errors import UserError
from runner.stages.data import check_rows, read_rows
from serving import contract
from trainer import chats
from trainer.errors import TrainerInputError

# FUZZ_EXAMPLES=20000 for a longer hunt; CI runs the default (about 10 s for all five)
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", 1000)), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
CASES = {}  # test name -> cases tried, printed at the end of the session

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
roles = st.sampled_from(["system", "user", "assistant", "robot", "", None, 3])
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": json_scalars | st.text()}), max_size=4)
chat_rows = st.one_of(json_values, st.fixed_dictionaries({"messages": messages | json_values}))


def count(name):
    CASES[name] = CASES.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print("\nfuzz cases tried: " + ", ".join(f"{k} {v}" for k, v in sorted(CASES.items())))


def jsonl_bytes(rows, sep=b"\n") -> bytes:
    return sep.join(json.dumps(r, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass") for r in rows)


def check_file(data: bytes, on_bad_row: str):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chats.jsonl"
        path.write_bytes(data)
        rows = read_rows(path)
        lines = [ln for ln in data.removeprefix(b"\xef\xbb\xbf").split(b"\n") if ln.rstrip(b"\r").strip()]
        assert len(rows) == len(lines)
        try:
            good, skipped = check_rows(rows, str(path), on_bad_row)
        except UserError as exc:
            assert on_bad_row == "error" and "bad row(s)" in str(exc)
            return
        assert len(good) + skipped == len(rows) and (on_bad_row == "skip" or skipped == 0)
        for row in good:  # a kept row is a chat the trainer takes and the data stage can write back as UTF-8
            assert row_problem(row) is None
            json.dumps(row, ensure_ascii=False).encode("utf-8")


@FUZZ
@given(st.binary(max_size=400), st.sampled_from(["error", "skip"]))
@example(b"\xef\xbb\xbf" + b"[" * 50_000, "skip")
@example(b'{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "x"}]}', "error")
def test_the_row_reader_takes_any_bytes(data, on_bad_row):
    count("data stage, bytes")
    check_file(data, on_bad_row)


@FUZZ
@given(st.lists(chat_rows, max_size=6), st.sampled_from([b"\n", b"\r\n"]), st.sampled_from(["error", "skip"]))
def test_the_row_checker_takes_any_json(rows, sep, on_bad_row):
    count("data stage, JSON rows")
    check_file(jsonl_bytes(rows, sep), on_bad_row)


@FUZZ
@given(st.binary(max_size=300))
def test_the_trainers_loader_takes_any_bytes(data):
    count("trainer loader, bytes")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.jsonl"
        path.write_bytes(data)
        try:
            rows = chats.load(path)
        except TrainerInputError:
            return
        assert rows and all(row_problem(r) is None for r in rows)


def check_request(raw):
    try:
        conversations, params = contract.parse_request(raw, limit=256)
    except contract.BadRequest as exc:
        assert str(exc)
        return
    assert 1 <= len(conversations) <= contract.MAX_INPUTS
    for msgs in conversations:
        assert msgs and all(m["role"] in ROLES and isinstance(m["content"], str) for m in msgs)
        for m in msgs:
            m["content"].encode("utf-8")  # what the tokenizer will be given
    assert set(params) == set(contract.PARAMS)
    assert 1 <= params["max_new_tokens"] <= 256 and 0 < params["top_p"] <= 1
    assert all(math.isfinite(params[k]) for k in ("temperature", "top_p")) and params["temperature"] >= 0


@FUZZ
@given(st.binary(max_size=300))
@example(b"[" * 100_000)
def test_the_request_parser_takes_any_bytes(raw):
    count("scoring, bytes")
    check_request(raw)


@FUZZ
@given(
    st.fixed_dictionaries(
        {"input_data": st.lists(st.text() | messages | json_values, max_size=4) | json_values},
        optional={
            "params": st.dictionaries(st.sampled_from(sorted(contract.PARAMS) + ["beam"]), json_scalars, max_size=5)
            | json_values
        },
    )
)
@example({"input_data": ["hi"], "params": {"temperature": float("nan")}})
@example({"input_data": ["hi"], "params": {"temperature": float("inf")}})
@example({"input_data": [[{"role": "user", "content": "\ud800"}]]})
def test_the_request_parser_takes_any_json(body):
    count("scoring, JSON bodies")
    check_request(json.dumps(body, allow_nan=True))
    check_request(body)  # as a server hands it over already decoded
