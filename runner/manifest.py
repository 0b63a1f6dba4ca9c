"""manifest.json: each stage's status, outputs and the hash of the inputs it ran with."""

import json
import time
from pathlib import Path

from common.files import write_atomic


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
        entry = {
            "status": status,
            "inputs_hash": inputs_hash,
            "outputs": outputs or {},
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra,
        }
        self.data["stages"][stage] = entry
        self.save(stage)

    def mark_stopped(self, stage: str):
        """What teardown says of deploy: its endpoint is gone, so the next deploy starts one (outputs kept to read)."""
        entry = self.entry(stage)
        if entry and entry.get("status") != "stopped":
            self.record(stage, "stopped", entry.get("inputs_hash"), entry.get("outputs"))

    def save(self, stage: str | None = None):
        """Write the manifest; with stage, only that stage's entry changes in the file (a teardown beside a running
        invocation records its stage without undoing the other's)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if stage is not None and self.path.exists():
            try:
                on_disk = json.loads(self.path.read_text())
                self.data = {**on_disk, "stages": {**on_disk.get("stages", {}), stage: self.data["stages"][stage]}}
            except ValueError:
                pass
        write_atomic(self.path, json.dumps(self.data, indent=2, sort_keys=True) + "\n")
