"""The GPUs this machine shows, asked of nvidia-smi (no torch import: plan mode stays quick)."""
import shutil
import subprocess
from functools import lru_cache
from typing import NamedTuple


class LocalGpu(NamedTuple):
    name: str
    count: int
    gib: float


@lru_cache(maxsize=1)
def visible() -> LocalGpu | None:
    """The first GPU's name and memory and how many there are; None without an NVIDIA GPU (or driver)."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    rows = [line.rsplit(",", 1) for line in r.stdout.splitlines() if "," in line] if r.returncode == 0 else []
    if not rows:
        return None
    name, mib = rows[0]
    return LocalGpu(name.strip(), len(rows), float(mib) / 1024)
