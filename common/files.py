"""Atomic file writes (a crash never leaves a half-written file, and readers never see one), and finding the
MLflow model folder in what a job wrote or Azure mounted."""

import os
from pathlib import Path


def write_atomic(path, text: str, mode: int | None = None):
    """Write via a temp file and rename, so a crash never leaves a half-written file and readers never see one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        if mode is not None:
            os.chmod(tmp, mode)
        fh.write(text)
    os.replace(tmp, path)


def find_mlflow_model(root) -> Path:
    """The folder holding an MLmodel file: root itself or the shallowest one below it (Azure nests it)."""
    root = Path(root)
    if (root / "MLmodel").is_file():
        return root
    found = sorted(root.rglob("MLmodel"), key=lambda p: len(p.parts))
    if not found:
        raise FileNotFoundError(f"no MLmodel file under {root}: expected an MLflow model folder")
    return found[0].parent
