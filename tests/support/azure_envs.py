"""Virtualenvs built from the pip lists of the generated Azure conda files, as Azure builds its environments.

Cached by a hash of the list under ~/.cache/phi3-runner/venvs (XDG_CACHE_HOME), so only a changed pin rebuilds.
PyTorch's index lines are left out: this machine cannot reach it, and its pip finds the pinned CPU build
(torch==X+cpu) on disk. Nothing here touches .venv: Azure-only packages never go there.
"""

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from runner.azure.environments import packages

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "phi3-runner" / "venvs"


def python311() -> str:
    found = shutil.which("python3.11") or sys.executable
    return found


def build(name: str, pip: list[str], timeout: float = 1500) -> Path:
    """The venv's python for this pip list; built once per list (several minutes the first time)."""
    pins = packages(pip)
    key = hashlib.sha256("\n".join(pins).encode()).hexdigest()[:16]
    target = CACHE / f"{name}-{key}"
    python = target / "bin" / "python"
    if (target / ".complete").is_file():
        return python
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}-{key}.lock", "w") as lock:  # xdist workers: one builds, the others wait for it
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / ".complete").is_file():
            _build(name, pins, target, timeout)
    return python


def _build(name: str, pins: list[str], target: Path, timeout: float):
    key = target.name.rsplit("-", 1)[1]
    tmp = CACHE / f".{name}-{key}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([python311(), "-m", "venv", str(tmp)], check=True)
    r = subprocess.run(
        [str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", *pins],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if r.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"pip could not build the {name} environment:\n{r.stderr[-3000:]}")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)  # venv scripts name their folder: fix the shebangs below
    _relocate(tmp, target)
    (target / ".complete").write_text("\n".join(pins) + "\n")  # last: a folder without it is rebuilt


def _relocate(old: Path, new: Path):
    """venv writes absolute paths into bin/ scripts and pyvenv.cfg; point them at the final folder."""
    for f in list((new / "bin").iterdir()) + [new / "pyvenv.cfg"]:
        if f.is_file() and not f.is_symlink():
            try:
                text = f.read_text()
            except UnicodeDecodeError:
                continue
            if str(old) in text:
                f.write_text(text.replace(str(old), str(new)))
