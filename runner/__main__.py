"""python -m runner [group=option ...] [key=value ...]: Hydra composes, runner.app.main does the rest."""
import os
import sys

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
    _exit_codes.append(app.main(cfg, HydraConfig.get().runtime.output_dir))


def main():
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    from .validate import renamed_override
    renamed = [m for m in map(renamed_override, sys.argv[1:]) if m]
    if renamed:  # Hydra would say only "not in struct"
        print("\n".join(f"error: {m}" for m in renamed), file=sys.stderr)
        sys.exit(2)
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
