"""Small file helpers shared by the trainer, the local endpoint and the runner (which may import trainer)."""
import json
import os
from pathlib import Path

REQUIREMENTS = Path(__file__).with_name("requirements.txt")


def write_atomic(path, text: str, mode: int | None = None):
    """Write via a temp file and rename, so a crash never leaves a half-written file and readers never see one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        if mode is not None:
            os.chmod(tmp, mode)
        fh.write(text)
    os.replace(tmp, path)


def pinned_requirements() -> list[str]:
    """trainer/requirements.txt as a list of pins: comments (whole-line or trailing) and blank lines dropped."""
    pins = (line.split("#", 1)[0].strip() for line in REQUIREMENTS.read_text().splitlines())
    return [p for p in pins if p]


def last_complete_checkpoint(checkpoints: Path, log) -> str | None:
    """The newest checkpoint-N whose trainer_state.json (the Trainer writes it last) reads back; one a kill cut
    short while it was being saved is passed over."""
    found = sorted((int(p.name.split("-")[1]), p) for p in checkpoints.glob("checkpoint-*")
                   if p.is_dir() and p.name.split("-")[1].isdigit())
    for _, path in reversed(found):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (OSError, ValueError):
            log(f"[train] {path.name} was not saved completely (interrupted); it is passed over")
    return None
