"""data: take a slice of a chat dataset, check every row, split train/test, write JSONL atomically."""

import hashlib
import json
import math
from pathlib import Path

from common.chats import problem_of, read_jsonl  # one reader and one definition of a chat, shared with the trainer

from ..errors import UserError
from ..spec import resolve_path

MAX_REPORTED = 10


def split_string(d, split=None) -> str:
    """The datasets split expression, e.g. train_sft[:10] or train_sft[:1%]; the whole split when split is given."""
    if split is not None:
        return split
    if d["rows"] is not None:
        return f"{d['split']}[:{d['rows']}]"
    pct = d["percent"]
    return d["split"] if pct == 100 else f"{d['split']}[:{pct:g}%]"


def eval_split_string(d) -> str:
    return f"{d['eval_split']}[:{d['eval_rows']}]" if d["eval_rows"] else d["eval_split"]


def dataset_location(name: str) -> str:
    """A hub id as it is; a local folder (data.dataset=./my_ultrachat) as an absolute path."""
    p = Path(name).expanduser()
    return str(p.resolve()) if p.is_dir() else name


def read_rows(path: Path) -> list[tuple[str, object]]:
    """(where, value) for each chat line of a JSONL file; where is 'line N' as an editor shows it."""
    if path.is_dir():
        raise UserError(f"data.path: {path} is a folder; point data.path at a JSONL file of chats")
    if not path.is_file():
        raise UserError(f"data.path: {path} does not exist; point data.path at a JSONL file of chats")
    return [(f"line {lineno}", value) for lineno, value in read_jsonl(path.read_bytes())]


def take_slice(rows, d):
    """The first data.rows rows, or data.percent of them: of a list, or of an Arrow dataset (an index selection)."""
    n = d["rows"] if d["rows"] is not None else int(round(len(rows) * d["percent"] / 100))
    return rows[:n] if isinstance(rows, list) else rows.select(range(min(n, len(rows))))


def load_hub(d, split: str):
    """The split of the hub dataset (or a local folder laid out like one) as an Arrow dataset: memory-mapped, not
    read into Python objects."""
    from trainer.hub import go_offline_unless_reachable

    online = go_offline_unless_reachable()
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(dataset_location(d["dataset"]), d["config_name"], split=split)
    except Exception as exc:  # the hub and the cache raise many different types
        if online:
            raise UserError(f"could not load {d['dataset']} ({d['config_name']}, {split}): {exc}") from None
        raise UserError(
            f"{d['dataset']} ({d['config_name']}, {split}) is not in the local Hugging Face cache and the hub "
            "cannot be reached from this machine. Either run once on a machine with access "
            "(the cache under ~/.cache/huggingface is reused), or export the chats to JSONL and use "
            "data.source=file data.path=/path/to/chats.jsonl"
        ) from None
    return ds


def check_rows(rows, source, on_bad_row):
    """rows: (where, value) pairs. The trainable values; bad ones named by where they are, or refused."""
    good, bad = [], []
    for where, value in rows:
        problem = problem_of(value)
        if problem:
            bad.append((where, problem))
        else:
            good.append(value)
    refuse_bad(bad, len(good), source, on_bad_row)
    return good, len(bad)


def check_table(ds, source, on_bad_row):
    """check_rows over an Arrow dataset, each row named 'row N' (its index in the split): the usable rows as an Arrow
    selection of it, and how many were bad. The checks run on the Arrow columns at once (passes_in_arrow); only
    the rows they flag are read into Python, where problem_of says exactly what is wrong (and has the last word)."""
    import numpy as np

    chats = ds.select_columns(["messages"]) if "messages" in ds.column_names else ds
    passed = passes_in_arrow(ds)
    if passed is None:  # not the list<struct<role, content>> column of a chat dataset: every row in Python
        suspects = range(len(ds))
    else:
        suspects = np.flatnonzero(~passed).tolist()
    bad = [(f"row {i}", p) for i in suspects if (p := problem_of(chats[int(i)]))]
    refuse_bad(bad, len(ds) - len(bad), source, on_bad_row)
    if not bad:
        return ds, 0
    out = {int(where.split()[1]) for where, _ in bad}
    return ds.select([i for i in range(len(ds)) if i not in out]), len(bad)


def passes_in_arrow(ds):
    """For each row, whether it passes row_problem's checks, computed on the Arrow column: a non-empty message list,
    each message with a role of system/user/assistant and a content (Arrow strings are valid UTF-8: no lone
    surrogates), and an assistant turn. None when the messages column is not a list of {role, content} structs."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from common.chats import ROLES

    if "messages" not in ds.column_names:
        return None
    col = ds.with_format("arrow")[:]["messages"]
    t = col.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not pa.types.is_struct(t.value_type):
        return None
    fields = {t.value_type.field(i).name: t.value_type.field(i).type for i in range(t.value_type.num_fields)}
    if not all(
        pa.types.is_string(fields.get(k)) or pa.types.is_large_string(fields.get(k)) for k in ("role", "content")
    ):
        return None
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(col)
    nonempty = pc.fill_null(pc.greater(pc.list_value_length(col), 0), False).to_numpy(zero_copy_only=False)
    flat, parents = pc.list_flatten(col), pc.list_parent_indices(col).to_numpy(zero_copy_only=False)
    role, content = pc.struct_field(flat, "role"), pc.struct_field(flat, "content")
    good_message = pc.and_(
        pc.fill_null(pc.is_in(role, value_set=pa.array(sorted(ROLES))), False), pc.is_valid(content)
    ).to_numpy(zero_copy_only=False)
    assistant = pc.fill_null(pc.equal(role, "assistant"), False).to_numpy(zero_copy_only=False)
    bad_messages = np.bincount(parents[~good_message], minlength=n)
    assistants = np.bincount(parents[assistant], minlength=n)
    return nonempty & (bad_messages == 0) & (assistants > 0)


def refuse_bad(bad: list, n_good: int, source: str, on_bad_row: str):
    """With data.on_bad_row=error, any bad row refuses the run, naming the first few and how to go on."""
    if bad and on_bad_row == "error":
        shown = [f"  {source}: {where}: {problem}" for where, problem in bad[:MAX_REPORTED]]
        more = [f"  ... and {len(bad) - MAX_REPORTED} more"] if len(bad) > MAX_REPORTED else []
        raise UserError(
            [
                f"{len(bad)} bad row(s) in {source}: fix them, or add data.on_bad_row=skip to train on the "
                f"other {n_good}:",
                *shown,
                *more,
            ]
        )


def split_rows(rows, test_size, seed):
    """A seeded shuffle into train and test (Arrow datasets); test_size is a fraction, or a row count when an int.
    rows: a list, or an Arrow dataset (split where it is: no Python copy of its rows)."""
    n_test = test_size if isinstance(test_size, int) else math.ceil(len(rows) * test_size)
    if n_test < 1 or len(rows) - n_test < 1:
        what = f"eval_rows={test_size}" if isinstance(test_size, int) else f"test_size={test_size}"
        raise UserError(
            f"{len(rows)} usable rows with {what} leave an empty train or test set; "
            f"use more data (data.rows / data.percent) or change data.{what.split('=')[0]}"
        )
    import datasets

    table = rows if isinstance(rows, datasets.Dataset) else datasets.Dataset.from_list(rows)
    parts = table.train_test_split(test_size=test_size, seed=seed)
    return parts["train"], parts["test"]


def write_jsonl(path: Path, rows) -> dict:
    """The chats (the messages alone: other columns, ultrachat's prompt and prompt_id, are not trained on) as JSONL,
    through a temp file renamed into place: an Arrow dataset by datasets' own JSON writer, a list (a file's rows)
    line by line. Returns the file's sha256, rows and bytes."""
    import os

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if isinstance(rows, list):
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("".join(json.dumps({"messages": r["messages"]}, ensure_ascii=False) + "\n" for r in rows))
    else:
        rows.select_columns(["messages"]).to_json(str(tmp), lines=True, force_ascii=False)
    digest = hashlib.sha256()
    with open(tmp, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    size = tmp.stat().st_size
    os.replace(tmp, path)
    return {"sha256": digest.hexdigest(), "rows": len(rows), "bytes": size}


def source_rows(d, whole: bool = False):
    """(source label, [(where, value)], sha256 of a local file or None): the slice, or the whole source."""
    if d["source"] == "file":
        path = resolve_path(d["path"])
        rows = read_rows(path)
        return str(path), (rows if whole else take_slice(rows, d)), file_sha256(path)
    split = split_string(d, d["split"] if whole else None)
    return f"{d['dataset']}:{split}", load_hub(d, split), None


def checked(rows, source, on_bad_row):
    """check_rows for a file's (where, value) pairs, check_table for a hub split's Arrow dataset."""
    return check_rows(rows, source, on_bad_row) if isinstance(rows, list) else check_table(rows, source, on_bad_row)


def hub_eval_rows(d, on_bad_row, warn):
    where = f"{d['dataset']}:{eval_split_string(d)}"
    good, skipped = check_table(load_hub(d, eval_split_string(d)), where, on_bad_row)
    if skipped:
        warn(f"skipped {skipped} bad row(s) of {where}")
    if not len(good):
        raise UserError(f"{where} has no usable rows to evaluate on; check data.eval_split and data.eval_rows")
    return where, good


def make_split(d, ctx):
    """train rows, test rows, how they were chosen (for the manifest and the log), and the pool of a fixed split."""
    mode = d["eval"]  # auto was settled before the run (runner/spec/settle.py)
    # pool: rows every point of a fixed-eval sweep shares, whatever its slice; the tiny model learns its tokenizer
    # from them, so every point starts from the same base model (else each slice would build its own vocabulary)
    pool = None
    if mode == "fixed" and d["source"] == "hub" and d["eval_split"]:
        source, rows, source_sha = source_rows(d)
        train, skipped = checked(rows, source, d["on_bad_row"])
        where, test = hub_eval_rows(d, d["on_bad_row"], ctx.warn)
        how = f"{where}, the same whatever the slice"
        pool = test  # the eval split: the same for every slice
        if not len(train):
            raise UserError(f"{source} has no usable rows to train on; use more data (data.rows / data.percent)")
    elif mode == "fixed":
        # held out of the whole source before the slice: the same rows whatever data.percent / data.rows say
        source, rows, source_sha = source_rows(d, whole=True)
        good, skipped = checked(rows, source, d["on_bad_row"])
        pool, test = split_rows(good, d["eval_rows"] or d["test_size"], d["seed"])  # pool: all a slice can take
        train = take_slice(pool, d)
        if not len(train):
            raise UserError(
                f"data.{'rows' if d['rows'] else 'percent'} leaves no training rows of the {len(pool)} "
                f"not held out; raise it"
            )
        how = f"{len(test)} rows held out of {source} (seed {d['seed']}) before the slice"
    else:
        source, rows, source_sha = source_rows(d)
        good, skipped = checked(rows, source, d["on_bad_row"])
        train, test = split_rows(good, d["test_size"], d["seed"])
        how = f"test_size={d['test_size']} of the slice (seed {d['seed']})"
    if skipped:
        ctx.warn(f"skipped {skipped} bad row(s) of {source}")
    return source, source_sha, train, test, skipped, mode, how, pool


def run(spec, ctx):
    d = spec["data"]
    source, source_sha, train, test, skipped, mode, how, pool = make_split(d, ctx)
    out_dir = ctx.run_dir / "data"
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = {"train.jsonl": train, "test.jsonl": test}
    if pool is not None:  # the tiny model's tokenizer corpus, the same in every point
        parts["pool.jsonl"] = pool
    else:
        (out_dir / "pool.jsonl").unlink(missing_ok=True)
    written = {name: write_jsonl(out_dir / name, rows) for name, rows in parts.items()}
    sha = {name: w["sha256"] for name, w in written.items()}
    ctx.log(
        f"[data] {source}: {len(train)} train / {len(test)} test rows"
        + (f", {skipped} skipped" if skipped else "")
        + f" -> {out_dir}"
    )
    ctx.log(f"[data] eval set ({mode}): {how}; sha256 {sha['test.jsonl'][:12]}")
    return {
        "train_file": str(out_dir / "train.jsonl"),
        "test_file": str(out_dir / "test.jsonl"),
        "train_rows": len(train),
        "test_rows": len(test),
        "train_bytes": written["train.jsonl"]["bytes"],  # for the Azure job's expected time
        "skipped_rows": skipped,
        "source": source,
        "sha256": sha,
        "source_sha256": source_sha,
        "eval": {"mode": mode, "from": how, "sha256": sha["test.jsonl"]},  # sweep summaries compare only equal ones
        **({"pool_file": str(out_dir / "pool.jsonl")} if pool is not None else {}),
    }


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def is_current(outputs, spec, ctx) -> bool:
    src = outputs.get("source_sha256")
    if src and (not Path(outputs["source"]).is_file() or file_sha256(outputs["source"]) != src):
        return False  # the local source file was edited since
    for key, name in (("train_file", "train.jsonl"), ("test_file", "test.jsonl")):
        p = Path(outputs.get(key, ""))
        if not p.is_file() or file_sha256(p) != outputs["sha256"][name]:
            return False
    return True


def plan(spec, ctx):
    d = spec["data"]
    if d["eval"] == "split":
        return [
            f"eval:   split: test_size={d['test_size']} of the slice (the tutorial's 80/20); "
            "it changes with the slice, so slices of different size do not compare"
        ]
    if d["source"] == "hub" and d["eval_split"]:
        return [f"eval:   fixed: {d['dataset']}:{eval_split_string(d)} for every slice; the slice trains whole"]
    share = f"{d['eval_rows']} rows" if d["eval_rows"] else f"test_size={d['test_size']}"
    return [f"eval:   fixed: {share} held out of the whole source (seed {d['seed']}) before the slice is taken"]
