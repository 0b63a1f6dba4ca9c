"""Read and check the JSONL chats handed to the trainer; keep only `messages` for SFTTrainer.

A string `prompt` column (ultrachat has one) would make TRL treat the data as prompt/completion,
so every other column is dropped.
"""
import json
from pathlib import Path

from .errors import TrainerInputError

ROLES = {"system", "user", "assistant"}


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
        msgs = row.get("messages") if isinstance(row, dict) else None
        if (not isinstance(msgs, list) or not msgs
                or not all(isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in msgs)):
            raise TrainerInputError(f"{path}: line {lineno}: 'messages' must be a non-empty list of "
                                    "{role: system|user|assistant, content: string}")
        if not any(m["role"] == "assistant" for m in msgs):
            raise TrainerInputError(f"{path}: line {lineno} has no assistant turn: nothing to learn from")
        rows.append({"messages": [{"role": m["role"], "content": m["content"]} for m in msgs]})
    if not rows:
        raise TrainerInputError(f"{path}: no chats in the file; the data stage writes train.jsonl with at least one row")
    return rows


def token_lengths(rows, tokenizer) -> list[int]:
    return [len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"]) for r in rows]
