"""Registers runner/sweep/launcher.py with Hydra as hydra/launcher=runner.

Hydra instantiates launchers only from classes defined under the hydra_plugins namespace: this one is the runner's,
defined here by name.
"""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

from runner.sweep.launcher import SweepLauncher


class RunnerLauncher(SweepLauncher):
    pass


@dataclass
class RunnerLauncherConf:
    _target_: str = "hydra_plugins.phi3_runner_launcher.RunnerLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="runner", node=RunnerLauncherConf, provider="phi3-runner")
