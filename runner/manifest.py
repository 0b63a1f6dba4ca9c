"""manifest.json: each stage's status, outputs and the hash of the inputs it ran with."""
import json
import os
import time
from pathlib import Path


def write_atomic(path: Path, text: str, mode: int | None = None):
    """Write via a temp file and rename, so a crash never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        if mode is not None:
            os.chmod(tmp, mode)
        fh.write(text)
    os.replace(tmp, path)


class Manifest:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "manifest.json"
        try:
            self.data = json.loads(self.path.read_text()) if self.path.exists() else {"stages": {}}
        except ValueError:
            from .errors import UserError
            raise UserError(f"{self.path} is not valid JSON; delete it to start this run's record afresh") from None

    def entry(self, stage: str) -> dict:
        return self.data["stages"].get(stage, {})

    def outputs(self, stage: str) -> dict:
        return self.entry(stage).get("outputs", {})

    def record(self, stage: str, status: str, inputs_hash: str | None = None, outputs: dict | None = None, **extra):
        entry = {"status": status, "inputs_hash": inputs_hash, "outputs": outputs or {},
                 "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
        if outputs is None and status not in ("done",):
            entry["outputs"] = self.outputs(stage) if status == "stopped" else {}
        self.data["stages"][stage] = entry
        self.save()

    def save(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(self.data, indent=2, sort_keys=True) + "\n")
