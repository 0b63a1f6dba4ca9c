"""Registers runner/sweep/launcher.py with Hydra as hydra/launcher=runner, and its sweeper as hydra/sweeper=runner.

Hydra instantiates launchers and sweepers only from classes defined under the hydra_plugins namespace: these are
the runner's, defined here by name.
"""

from dataclasses import dataclass
from typing import Dict, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore

from runner.sweep.launcher import SweepLauncher


class RunnerLauncher(SweepLauncher):
    pass


@dataclass
class RunnerLauncherConf:
    _target_: str = "hydra_plugins.phi3_runner_launcher.RunnerLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="runner", node=RunnerLauncherConf, provider="phi3-runner")


class RunnerSweeper(BasicSweeper):
    """Hydra's basic sweeper (the same points, the same batches), less its check that composes every point before
    the launcher does: the runner's launcher composes each point itself, gathers every problem (a bad option
    included) and refuses the sweep with all of them, leaving nothing behind."""

    def validate_batch_is_legal(self, batch) -> None:
        pass


@dataclass
class RunnerSweeperConf:
    _target_: str = "hydra_plugins.phi3_runner_launcher.RunnerSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="runner", node=RunnerSweeperConf, provider="phi3-runner")
