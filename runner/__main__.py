"""python -m runner [group=option ...] [key=value ...]: Hydra composes, runner.app does the rest."""
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from . import CONF_DIR

_task_started = False
_exit_codes = []  # one per run; a multirun goes on past a bad point and exits with the worst status


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig):
    global _task_started
    _task_started = True
    from hydra.core.hydra_config import HydraConfig

    from . import app
    from .errors import UserError
    from .spec import env_sourced_paths, to_spec

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    fresh = not any(run_dir.iterdir()) if run_dir.exists() else True
    try:
        spec = to_spec(cfg)
    except UserError as exc:
        app._remove_if_fresh(run_dir, fresh)
        print(f"error: {exc}", file=sys.stderr)
        _exit_codes.append(exc.exit_code)
        return
    _exit_codes.append(app.run(spec, run_dir, env_sourced_paths(cfg), fresh_dir=fresh))


def main():
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    try:
        _hydra_main()
    except SystemExit as exc:
        # Hydra exits 1 on a bad override or unknown option before our task runs: that is bad input.
        if exc.code == 1 and not _task_started:
            sys.exit(2)
        raise
    sys.exit(max(_exit_codes, default=0))


if __name__ == "__main__":
    main()
