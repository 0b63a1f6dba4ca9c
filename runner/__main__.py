"""python -m runner [group=option ...] [key=value ...]: Hydra composes, runner.app.main does the rest."""

import functools
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from . import CONF_DIR


def make_task():
    """The function Hydra runs for each composed config: app.main, which returns the run's exit status.

    Each status is kept on the function (task.codes): a -m sweep goes on past a failed point and exits with the
    worst. Hydra hands this same function to the launcher, which calls it with the point it runs (sweep=...) and adds
    the sweep's own refusals to task.codes; no module global carries either.
    """

    def task(cfg: DictConfig, sweep: dict | None = None) -> int:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from . import app
        from .hints import Again

        task.started = True
        hc = HydraConfig.get()
        if sweep is None and hc.mode == RunMode.MULTIRUN:  # another launcher than ours: only its overrides
            sweep = {"overrides": list(hc.overrides.task), "point": {}}
        again = Again.from_argv(sys.argv[1:]) if sweep is None else Again.for_point(sweep["overrides"])
        code = app.main(cfg, hc.runtime.output_dir, sweep=sweep, again=again)
        task.codes.append(code)
        return code

    task.codes, task.started = [], False
    return task


def options(group: str) -> str:
    """--help's list of a group's options, its default first: conf/<group>/*.yaml (bases live in conf/_base/),
    and those of a --config-dir, which Hydra searches too. Hydra resolves the help page at every composition (a
    sweep composes each point twice): the list is made once per group and command line."""
    dirs = [CONF_DIR] + [
        a.split("=", 1)[1] if "=" in a else sys.argv[i + 2]
        for i, a in enumerate(sys.argv[1:])
        if a.split("=")[0] in ("--config-dir", "-cd")
    ]
    return _options(group, tuple(map(str, dirs)))


@functools.lru_cache(maxsize=64)
def _options(group: str, dirs: tuple) -> str:
    import yaml

    defaults = yaml.safe_load((CONF_DIR / "config.yaml").read_text())["defaults"]
    default = next((d[group] for d in defaults if isinstance(d, dict) and group in d), None)
    names = sorted({p.stem for d in dirs for p in Path(d, group).glob("*.yaml")} - {default})
    return ", ".join(([f"{default} (default)"] if default else []) + names)


def main():
    _options.cache_clear()  # a list per invocation: options added since the last one in this process are listed
    OmegaConf.register_new_resolver("runner_options", options, replace=True)
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    from .spec.validate import renamed_override

    renamed = [m for m in map(renamed_override, sys.argv[1:]) if m]
    if renamed:  # Hydra would say only "not in struct"
        print("\n".join(f"error: {m}" for m in renamed), file=sys.stderr)
        sys.exit(2)
    task = make_task()
    try:
        hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(task)()
    except BrokenPipeError:  # e.g. python -m runner --help | head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except SystemExit as exc:
        # Hydra exits 1 on a bad override or unknown option before our task runs: that is bad input.
        if exc.code == 1 and not task.started:
            sys.exit(2)
        raise
    sys.exit(max(task.codes, default=0))


if __name__ == "__main__":
    main()
