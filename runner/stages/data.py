"""data: take a slice of a chat dataset, check every row, split train/test, write JSONL atomically."""
import hashlib
import json
import math
from pathlib import Path

from trainer.chats import problem_of, read_jsonl  # one reader and one definition of a chat, shared with the trainer

from .. import REPO_ROOT
from ..errors import UserError
from ..manifest import write_atomic

MAX_REPORTED = 10


def split_string(d) -> str:
    """The datasets split expression, e.g. train_sft[:10] or train_sft[:1%]."""
    if d["rows"] is not None:
        return f"{d['split']}[:{d['rows']}]"
    pct = d["percent"]
    return d["split"] if pct == 100 else f"{d['split']}[:{pct:g}%]"


def resolve_path(path: str) -> Path:
    """Absolute as given; a relative path from the current directory if it is there, else from the repository."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    return REPO_ROOT / p


def read_rows(path: Path) -> list[tuple[str, object]]:
    """(where, value) for each chat line of a JSONL file; where is 'line N' as an editor shows it."""
    if path.is_dir():
        raise UserError(f"data.path: {path} is a folder; point data.path at a JSONL file of chats")
    if not path.is_file():
        raise UserError(f"data.path: {path} does not exist; point data.path at a JSONL file of chats")
    return [(f"line {lineno}", value) for lineno, value in read_jsonl(path.read_bytes())]


def take_slice(rows: list, d) -> list:
    if d["rows"] is not None:
        return rows[: d["rows"]]
    return rows[: int(round(len(rows) * d["percent"] / 100))]


def load_hub_rows(d) -> list:
    from trainer.hub import go_offline_unless_reachable
    online = go_offline_unless_reachable()
    import datasets
    datasets.logging.set_verbosity_error()
    split = split_string(d)
    try:
        ds = datasets.load_dataset(d["dataset"], d["config_name"], split=split)
    except Exception as exc:  # the hub and the cache raise many different types
        if online:
            raise UserError(f"could not load {d['dataset']} ({d['config_name']}, {split}): {exc}") from None
        raise UserError(
            f"{d['dataset']} ({d['config_name']}, {split}) is not in the local Hugging Face cache and the hub "
            "cannot be reached from this machine. Either run once on a machine with access "
            "(the cache under ~/.cache/huggingface is reused), or export the chats to JSONL and use "
            "data.source=file data.path=/path/to/chats.jsonl") from None
    return ds.to_list()


def check_rows(rows, source, on_bad_row):
    """rows: (where, value) pairs. The trainable values; bad ones named by where they are, or refused."""
    good, bad = [], []
    for where, value in rows:
        problem = problem_of(value)
        if problem:
            bad.append((where, problem))
        else:
            good.append(value)
    if bad and on_bad_row == "error":
        shown = [f"  {source}: {where}: {problem}" for where, problem in bad[:MAX_REPORTED]]
        more = [f"  ... and {len(bad) - MAX_REPORTED} more"] if len(bad) > MAX_REPORTED else []
        raise UserError([f"{len(bad)} bad row(s) in {source}: fix them, or add data.on_bad_row=skip to train on the "
                         f"other {len(good)}:", *shown, *more])
    return good, len(bad)


def split_rows(rows, test_size, seed):
    n_test = math.ceil(len(rows) * test_size)
    if n_test < 1 or len(rows) - n_test < 1:
        raise UserError(f"{len(rows)} usable rows with test_size={test_size} leave an empty train or test set; "
                        "use more data (data.rows / data.percent) or change data.test_size")
    import datasets
    parts = datasets.Dataset.from_list(rows).train_test_split(test_size=test_size, seed=seed)
    return parts["train"].to_list(), parts["test"].to_list()


def _jsonl(rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def run(spec, ctx):
    d = spec["data"]
    source_sha = None
    if d["source"] == "file":
        path = resolve_path(d["path"])
        source = str(path)
        source_sha = file_sha256(path) if path.is_file() else None
        rows = take_slice(read_rows(path), d)
    else:
        source = f"{d['dataset']}:{split_string(d)}"
        rows = [(f"row {i}", value) for i, value in enumerate(load_hub_rows(d))]
    good, skipped = check_rows(rows, source, d["on_bad_row"])
    if skipped:
        ctx.warn(f"skipped {skipped} bad row(s) of {source}")
    train, test = split_rows(good, d["test_size"], d["seed"])
    out_dir = ctx.run_dir / "data"
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = {"train.jsonl": _jsonl(train), "test.jsonl": _jsonl(test)}
    for name, text in texts.items():
        write_atomic(out_dir / name, text)
    ctx.log(f"[data] {source}: {len(train)} train / {len(test)} test rows"
            + (f", {skipped} skipped" if skipped else "") + f" -> {out_dir}")
    return {
        "train_file": str(out_dir / "train.jsonl"), "test_file": str(out_dir / "test.jsonl"),
        "train_rows": len(train), "test_rows": len(test), "skipped_rows": skipped, "source": source,
        "sha256": {n: hashlib.sha256(t.encode()).hexdigest() for n, t in texts.items()},
        "source_sha256": source_sha,
    }


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def is_current(outputs, spec, ctx) -> bool:
    src = outputs.get("source_sha256")
    if src and (not Path(outputs["source"]).is_file() or file_sha256(outputs["source"]) != src):
        return False  # the local source file was edited since
    for key, name in (("train_file", "train.jsonl"), ("test_file", "test.jsonl")):
        p = Path(outputs.get(key, ""))
        if not p.is_file() or hashlib.sha256(p.read_bytes()).hexdigest() != outputs["sha256"][name]:
            return False
    return True
