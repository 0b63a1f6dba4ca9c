"""The trainer's file helpers: its pinned requirements (the Azure environments are generated from them) and the
checkpoint a re-run resumes from. Atomic writes: common/files.py."""

import json
from pathlib import Path

REQUIREMENTS = Path(__file__).with_name("requirements.txt")


def pinned_requirements() -> list[str]:
    """trainer/requirements.txt as a list of pins: comments (whole-line or trailing) and blank lines dropped."""
    pins = (line.split("#", 1)[0].strip() for line in REQUIREMENTS.read_text().splitlines())
    return [p for p in pins if p]


def last_complete_checkpoint(checkpoints: Path, log) -> str | None:
    """The newest checkpoint-N whose trainer_state.json (the Trainer writes it last) reads back; one a kill cut
    short while it was being saved is passed over."""
    found = sorted(
        (int(p.name.split("-")[1]), p)
        for p in checkpoints.glob("checkpoint-*")
        if p.is_dir() and p.name.split("-")[1].isdigit()
    )
    for _, path in reversed(found):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (OSError, ValueError):
            log(f"[train] {path.name} was not saved completely (interrupted); it is passed over")
    return None
