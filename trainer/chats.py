"""Read and check the JSONL chats handed to the trainer; keep only `messages` for SFTTrainer.

A string `prompt` column (ultrachat has one) would make TRL treat the data as prompt/completion,
so every other column is dropped.
"""
import json
from pathlib import Path

from .errors import TrainerInputError

ROLES = {"system", "user", "assistant"}


def row_problem(row) -> str | None:
    """Why a row cannot be trained on, or None when it is fine."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return "'messages' must be a non-empty list"
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or set(m) < {"role", "content"}:
            return f"messages[{i}] must be an object with 'role' and 'content'"
        if m["role"] not in ROLES:
            return f"messages[{i}].role is {m['role']!r}; expected system, user or assistant"
        if not isinstance(m["content"], str):
            return f"messages[{i}].content must be a string, got {type(m['content']).__name__}"
    if not any(m["role"] == "assistant" for m in msgs):
        return "no assistant turn: nothing to learn from"
    return None


def load(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise TrainerInputError(f"{path}: no such file")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainerInputError(f"{path}: line {lineno} is not JSON ({exc.msg})") from None
        problem = row_problem(row)
        if problem:
            raise TrainerInputError(f"{path}: line {lineno}: {problem}")
        rows.append({"messages": [{"role": m["role"], "content": m["content"]} for m in row["messages"]]})
    if not rows:
        raise TrainerInputError(f"{path}: no chats in the file; the data stage writes train.jsonl with at least one row")
    return rows


def token_lengths(rows, tokenizer) -> list[int]:
    return [len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"]) for r in rows]
