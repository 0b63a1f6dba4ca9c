"""A -m sweep's points before any runs: each composed and validated (every problem of every point gathered), the
sweep's own rules, the plan of the whole sweep; a refused sweep leaves nothing behind."""

import copy
from pathlib import Path

from omegaconf import OmegaConf, open_dict, read_write

from ..errors import UserError


class Point:
    def __init__(self, idx, overrides, config, run_dir, spec=None, error=None):
        self.idx, self.overrides, self.config, self.run_dir = idx, list(overrides), config, Path(run_dir)
        self.spec, self.error, self.name = spec, error, ""

    @property
    def detached(self):
        """The module that follows this point's cloud job in a sweep (registry.DETACHED_IN_SWEEPS), or None."""
        from ..registry import sweep_backend

        return sweep_backend(self.spec)


def compose_point(launcher, idx, overrides) -> Point:
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException

    from ..spec import to_spec
    from ..spec.settle import settle

    try:
        config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    except HydraException as exc:  # an option that does not exist, a key that is not in the config: said with the rest
        said = " ".join(str(exc).split("Config search path:")[0].split()).replace("\t", " ")
        return Point(idx, overrides, None, launcher.config.hydra.sweep.dir, error=said)
    with open_dict(config):
        config.hydra.job.id = idx
        config.hydra.job.num = idx
    before = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(config)  # the run directory reads ${hydra:runtime.choices.*}
    try:
        run_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir"))) / str(
            OmegaConf.select(config, "hydra.sweep.subdir")
        )
        task = copy.deepcopy(config)
        with read_write(task), open_dict(task):
            del task["hydra"]
        try:
            return Point(idx, overrides, config, run_dir, spec=settle(to_spec(task), list(overrides)))
        except UserError as exc:
            return Point(idx, overrides, config, run_dir, error=str(exc))
    finally:
        if before is not None:
            HydraConfig.instance().cfg = before


def sweep_problems(points) -> list[str]:
    """Every point's problems (the same one in every point said once), then the sweep's own."""
    from .. import sweep
    from ..spec.validate import problems

    by_problem = {}
    for p in points:
        for msg in [p.error] if p.error else problems(p.spec):
            by_problem.setdefault(msg, []).append(p.name)
    lines = []
    for msg, names in by_problem.items():
        where = "every point" if len(names) == len(points) and len(points) > 1 else ", ".join(names)
        lines.append(f"  - {msg}" + (f"  [{where}]" if len(points) > 1 else ""))
    by_dir = {}
    for p in points:
        if p.config is not None:  # a point that did not compose has no folder of its own
            by_dir.setdefault(p.run_dir.resolve(), []).append(p.name)
    for run_dir, names in by_dir.items():
        if len(names) > 1:
            lines.append(
                f"  - points {' and '.join(names)} would share one run directory, {run_dir}, and overwrite "
                "each other: vary a value that names the folder (overrides other than compute, model, data "
                "and run.*), or run them as separate commands with different run.name"
            )
    ok = [p for p in points if not p.error]
    lines += [f"  - {m}" for m in sweep.problems([{"overrides": p.overrides, "spec": p.spec} for p in ok])]
    return lines


def print_plan(sweep_dir: Path, points):
    from common.files import write_atomic

    lines = [f"sweep: {len(points)} points under {sweep_dir}"]
    local = [p for p in points if not p.detached]
    if local:
        lines.append(f"{len(local)} local point(s): one after another on this machine")
    for backend in {p.detached for p in points} - {None}:
        lines += backend.plan([p.spec for p in points if p.detached is backend])
    lines.append(
        "every point is evaluated on the same eval rows (data.eval=fixed)"
        if all(p.spec["data"]["eval"] == "fixed" for p in points)
        else "points evaluate on different eval rows (data.eval=split): the summary will not compare them"
    )
    lines.append(
        "then: the summary (sweep.md, sweep.csv, sweep.png) at the sweep's root, with the command that deploys "
        "the best point"
        + (
            " (sweep.deploy=best: deployed when the sweep ends)"
            if points[0].spec.get("sweep", {}).get("deploy") == "best"
            else ""
        )
    )
    text = "\n".join(lines) + "\n"
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    write_atomic(Path(sweep_dir) / "sweep-plan.txt", text)
    print("---\n" + text.rstrip(), flush=True)


def take_back(sweep_dir: Path):
    """A refused sweep leaves nothing: Hydra's multirun.yaml and the folders this command made go (a sweep folder
    that was there before stays as it was, multirun.yaml aside, which Hydra rewrites)."""
    from ..rundir import remove_created

    remove_created(sweep_dir, also=("multirun.yaml",))
