"""The baseline for bench/plan_overhead.py: a bare Hydra app composing the same conf/, doing nothing else."""

import hydra

from runner import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg):
    pass


if __name__ == "__main__":
    main()
