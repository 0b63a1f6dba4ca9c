"""What a chat row is: its messages' rules and the JSONL reader that names each bad line. One definition for the
data stage, the trainer and the endpoint's request parsing."""

import json

ROLES = {"system", "user", "assistant"}


def is_text(s: str) -> bool:
    """False for a str with lone surrogates (JSON lets "\\ud800" through; UTF-8 and tokenizers do not)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def message_problem(m) -> str | None:
    """What is wrong with one chat message, said after its place (messages[1], input_data[0][1]); None if fine."""
    if not isinstance(m, dict) or not {"role", "content"} <= set(m):
        return " must be an object with 'role' and 'content'"
    if m["role"] not in ROLES:
        return f".role is {m['role']!r}; expected system, user or assistant"
    if not isinstance(m["content"], str):
        return f".content must be a string, got {type(m['content']).__name__}"
    if not is_text(m["content"]):
        return ".content holds a lone surrogate (a \\ud800-\\udfff escape), which is not text"
    return None


def row_problem(row) -> str | None:
    """Why a row cannot be trained on, or None when it is fine."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return "'messages' must be a non-empty list"
    for i, m in enumerate(msgs):
        problem = message_problem(m)
        if problem:
            return f"messages[{i}]{problem}"
    if not any(m["role"] == "assistant" for m in msgs):
        return "no assistant turn: nothing to learn from"
    return None


class Unreadable(str):
    """Why a line could not be read as JSON (bad UTF-8, not JSON): a problem, carried like a row."""


def read_jsonl(data: bytes):
    """(line number as editors show it, parsed value or Unreadable) for each non-blank line.

    Accepts what other tools write: a UTF-8 byte-order mark (Windows, Excel), CRLF line ends, blank lines.
    A line that is not UTF-8 or not JSON is one bad row, not the end of the file.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield (
                lineno,
                Unreadable(
                    f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); save the file as UTF-8"
                ),
            )
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            yield lineno, Unreadable(f"not JSON ({exc.msg} at column {exc.colno})")
        except RecursionError:
            yield lineno, Unreadable("not JSON this reader can take (nested too deeply)")


def problem_of(value) -> str | None:
    """Why a value read by read_jsonl cannot be trained on, or None."""
    return str(value) if isinstance(value, Unreadable) else row_problem(value)
