"""python tests/support/rank_writes.py <trainer args>: `python -m trainer <trainer args>`, recording what this process wrote.

A Python audit hook notes every path the process opens for writing, renames onto, creates as a new folder or opens as
an SQLite database (MLflow's store), and at exit writes them to $RANK_WRITES_DIR/rank-<RANK>.json, so a test can say
which rank wrote which file. What native code writes without Python's open (safetensors' Rust writer) is not seen;
the folder it writes into, and every other file, is.
"""

import json
import os
import runpy
import sys

OUT = os.environ["RANK_WRITES_DIR"]
written = set()
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _path(p):
    return os.path.abspath(os.fsdecode(p)) if isinstance(p, (str, bytes, os.PathLike)) else None


def hook(event, args):
    if event == "open":
        path, mode, flags = args
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & WRITE_FLAGS
        ):
            written.add(_path(path))
    elif event in ("os.rename", "os.replace"):
        written.add(_path(args[1]))
    elif event == "os.mkdir" and not os.path.exists(args[0]):  # mkdir(exist_ok=True) of a folder there creates none
        written.add(_path(args[0]))
    elif event == "sqlite3.connect":
        written.add(_path(args[0]))


sys.addaudithook(hook)
sys.argv = ["trainer", *sys.argv[1:]]
try:
    runpy.run_module("trainer", run_name="__main__", alter_sys=True)
finally:
    record = sorted(p for p in written if p)
    with open(os.path.join(OUT, f"rank-{os.environ.get('RANK', '0')}.json"), "w") as fh:
        json.dump(record, fh)
