"""What a stage gets besides the spec: its run directory, the manifest and a printer."""

import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .hints import Again
from .manifest import Manifest


def _print(msg: str):
    print(msg, flush=True)


@dataclass
class Context:
    run_dir: Path
    manifest: Manifest
    log: callable = field(default=_print)
    inputs_hash: str = ""  # of the stage being run: names folders whose content depends on its inputs
    previous: dict = field(default_factory=dict)  # the stage's manifest entry before this attempt
    stage: str = ""  # the stage being run
    point: dict = field(default_factory=dict)  # in a -m sweep: name, parent MLflow run, whether to detach
    again: Again = field(default_factory=Again)  # the commands that select this run again, for hints to paste

    def upstream(self, stage: str) -> dict:
        entry = self.manifest.entry(stage)
        if entry.get("status") == "stopped":
            raise UserError(
                f"the endpoint of {self.run_dir} was torn down ({entry.get('updated', 'earlier')}); "
                f"bring it back with: {self.again.command(stage, 'chat')}"
            )
        if entry.get("status") != "done":
            raise UserError(
                f"the {stage} stage has not finished in {self.run_dir}: run it first: {self.again.command(stage)}"
            )
        return entry["outputs"]

    def note(self, outputs: dict):
        """Record outputs of the running stage now (e.g. a submitted job's name), so a kill does not lose them."""
        entry = self.manifest.entry(self.stage)
        self.manifest.record(self.stage, "running", entry.get("inputs_hash"), {**entry.get("outputs", {}), **outputs})

    def warn(self, msg: str):
        print(f"warning: {msg}", file=sys.stderr, flush=True)
