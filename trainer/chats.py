"""Read and check the JSONL chats handed to the trainer; keep only `messages` for SFTTrainer.

A string `prompt` column (ultrachat has one) would make TRL treat the data as prompt/completion,
so every other column is dropped. What a chat row is: common/chats.py.
"""

from pathlib import Path

from common.chats import problem_of, read_jsonl

from .errors import TrainerInputError


def load(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise TrainerInputError(f"{path}: no such file")
    rows = []
    for lineno, row in read_jsonl(path.read_bytes()):
        problem = problem_of(row)
        if problem:
            raise TrainerInputError(f"{path}: line {lineno}: {problem}")
        rows.append({"messages": [{"role": m["role"], "content": m["content"]} for m in row["messages"]]})
    if not rows:
        raise TrainerInputError(
            f"{path}: no chats in the file; the data stage writes train.jsonl with at least one row"
        )
    return rows


def token_lengths(rows, tokenizer) -> list[int]:
    return [
        len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"]) for r in rows
    ]
