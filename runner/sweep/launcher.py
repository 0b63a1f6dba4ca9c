"""The Hydra launcher of -m sweeps (hydra/launcher=runner, registered by hydra_plugins/phi3_runner_launcher).

1. Composes and validates every point first (runner/sweep/points.py): a bad point refuses the whole sweep before
   anything runs.
2. plan=true: each point's plan, then how the sweep would run and what its Azure jobs cost at most.
3. Azure ML points: every point's data stage and job submission first, then all jobs followed together
   (the sweep takes about as long as its slowest job, within compute.max_instances), then each point's
   remaining stages. Local points run one after another in this process (this machine's cores are few).
4. The summary at the sweep's root (runner/sweep/summary.py), the sweep's MLflow parent run (runner/sweep/__init__.py), and with
   sweep.deploy=best the best point deployed.

A point that is interrupted (Ctrl-C) stops the sweep; the same command resumes it: finished points are skipped,
a training run goes on from its checkpoint, a submitted Azure job is followed again rather than submitted twice.
"""

import os
import sys
from pathlib import Path

from hydra.plugins.launcher import Launcher
from omegaconf import OmegaConf, open_dict

from ..errors import INTERRUPTED, UserError
from ..redact import command_shown
from ..rundir import OneWriter
from .points import Point, compose_point, print_plan, sweep_problems, take_back


class SweepLauncher(Launcher):
    def __init__(self) -> None:
        super().__init__()
        self.config = self.task_function = self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides, initial_job_idx):
        from hydra.core.utils import configure_log, setup_globals

        from .. import sweep

        exit_codes = self._codes()
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        points = [compose_point(self, initial_job_idx + i, o) for i, o in enumerate(job_overrides)]
        for p, name in zip(points, sweep.varying([{"overrides": p.overrides} for p in points])):
            p.name = " ".join(name) or "defaults"
        bad = sweep_problems(points)
        if bad:
            print(
                "\n".join([f"error: the sweep is invalid ({len(points)} points; nothing ran):", *bad]), file=sys.stderr
            )
            exit_codes.append(2)
            take_back(sweep_dir)
            return []
        specs = [p.spec for p in points]
        if all(s["plan"] for s in specs):
            returns = [self._run(p) for p in points]
            print_plan(sweep_dir, points)
            return returns
        if all(s["stages"] == ["teardown"] for s in specs):
            return self._execute(sweep_dir, points)  # teardown is not kept out by a sweep that is running
        sweep_dir.mkdir(parents=True, exist_ok=True)
        lock = OneWriter(
            sweep_dir, command_shown(sys.argv[1:]), "sweep"
        )  # the sweep's record; each point locks its own directory too
        try:
            lock.__enter__()
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            exit_codes.append(2)
            return []
        try:
            return self._execute(sweep_dir, points)
        finally:
            lock.__exit__()

    # ---- running points -----------------------------------------------------------------------

    def _codes(self) -> list:
        """Where the sweep's own statuses go: the task's (runner.__main__.make_task), beside each point's."""
        return getattr(self.task_function, "codes", [])

    def _run(self, p: Point, detach=False, parent=None, extra=()):
        from hydra.core.utils import run_job

        config = p.config
        if extra:
            config = self.hydra_context.config_loader.load_sweep_config(self.config, [*p.overrides, *extra])
            with open_dict(config):
                config.hydra.job.id = config.hydra.job.num = p.idx
        point = {
            "overrides": [*p.overrides, *extra],
            "point": {"name": p.name, "detach": detach, "parent_run_id": (parent or {}).get("run_id")},
            "spec": None if extra else p.spec,  # composed, settled and validated once, in launch()
        }
        return run_job(
            hydra_context=self.hydra_context,
            task_function=lambda cfg: self.task_function(cfg, sweep=point),
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )

    def _execute(self, sweep_dir, points):
        from .. import sweep
        from . import summary as sweep_summary

        exit_codes = self._codes()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        local = [p for p in points if not p.detached]
        cloud = [p for p in points if p.detached]
        runs = [
            {"name": p.name, "overrides": sweep.shown(p.overrides), "run_dir": os.path.relpath(p.run_dir, sweep_dir)}
            for p in points
        ]
        prev = sweep.belongs_to(sweep_dir, runs)  # one point of a recorded sweep redone: summarise the whole sweep
        record = {**prev} if prev else {"runs": runs}
        summarised = any(s in p.spec["stages"] for p in points for s in ("data", "train", "eval", "register"))
        parent = None
        if any("train" in p.spec["stages"] for p in local):
            parent = sweep.start_parent(local[0].spec, sweep_dir, prev, self._overrides(), len(record["runs"]))
            record.update(tracking_uri=parent["tracking_uri"], parent_run_id=parent["run_id"])
        if summarised:
            sweep.remember(sweep_dir, record)
        print(
            f"[sweep] {len(points)} points: "
            + (f"{len(cloud)} in the cloud (jobs submitted together)" if cloud else "")
            + (", " if cloud and local else "")
            + (f"{len(local)} here, one after another" if local else ""),
            flush=True,
        )
        returns = {}
        # cloud points first: their jobs run there while the local points train here
        stopped = self._in_turn(cloud, returns, detach=True) or self._in_turn(local, returns, True, parent=parent)
        if cloud and not stopped:
            # each point's own run again: it reads its finished job (or says why it failed), then registers.
            # A point whose first pass failed (its data, its submission) is not tried a second time.
            stopped = self._follow(cloud) or self._in_turn([p for p in cloud if _code(returns[p.idx]) == 0], returns)
        if stopped:
            print("[sweep] stopped; re-run the same command to resume (finished points are skipped)", file=sys.stderr)
        summary = {"best": None}
        if summarised:
            summary = sweep_summary.summarize(
                sweep_dir, [{**r, "run_dir": sweep_dir / r["run_dir"]} for r in record["runs"]]
            )
        if parent:
            sweep.end_parent(parent, summary, sweep_dir, ok=not stopped and max(exit_codes, default=0) == 0)
        if points[0].spec.get("sweep", {}).get("deploy") == "best" and not stopped:
            self._deploy_best(points, summary)
        return [returns[p.idx] for p in points if p.idx in returns]

    def _in_turn(self, points, returns: dict, announce: bool = False, **run) -> bool:
        """Run points one after another, their returns into returns; True when one was interrupted (the rest are
        not run)."""
        for p in points:
            if announce:
                print(f"[sweep] point {p.name}", flush=True)
            returns[p.idx] = self._run(p, **run)
            if _interrupted(returns[p.idx]):
                return True
        return False

    def _overrides(self) -> list[str]:
        return [str(o) for o in OmegaConf.to_container(self.config.hydra.overrides.task)]

    def _follow(self, cloud) -> bool:
        """Follow every submitted job together; True when the sweep has to stop (Ctrl-C, Azure unreachable)."""
        exit_codes = self._codes()

        try:
            for backend in {p.detached for p in cloud}:
                backend.wait_all(
                    [(p.spec, p.run_dir, p.name) for p in cloud if p.detached is backend],
                    log=lambda m: print(m, flush=True),
                )
            return False
        except KeyboardInterrupt:
            print(
                "[sweep] interrupted while following the jobs; they keep running on Azure ML. The same "
                "command follows them again.",
                file=sys.stderr,
            )
            exit_codes.append(INTERRUPTED)
        except Exception as exc:  # the network, an expired login, a deleted job: the jobs themselves go on
            # the backend says what went wrong (without ids, as a stage's failure would)
            print(
                f"error: lost track of the sweep's Azure ML jobs; they keep running there. Re-run the same command "
                f"to follow them again.\n{exc}",
                file=sys.stderr,
            )
            exit_codes.append(2 if isinstance(exc, UserError) else 1)
        return True

    def _deploy_best(self, points, summary):
        exit_codes = self._codes()

        best = summary["best"]
        if best is None:
            print("[sweep] sweep.deploy=best: no point to deploy (none finished, or eval sets differ)", file=sys.stderr)
            exit_codes.append(1)
            return
        p = next((p for p in points if p.name == best["point"]), None)
        if p is None:  # the best is a point of the recorded sweep that this command did not run
            print(
                f"[sweep] sweep.deploy=best: the best point, {best['point']}, is not among this command's points; "
                "deploy it with the command in sweep.md",
                file=sys.stderr,
            )
            exit_codes.append(1)
            return
        from . import deploy_stages

        stages = deploy_stages(best["registered"])
        print(f"[sweep] deploying the best point, {p.name}", flush=True)
        self._run(p, extra=[f"stages=[{stages}]"])


def _code(ret) -> int:
    """A point's exit status from Hydra's JobReturn (its public status and return_value)."""
    from hydra.core.utils import JobStatus

    value = ret.return_value if ret.status == JobStatus.COMPLETED else None
    return value if isinstance(value, int) else 1


def _interrupted(ret) -> bool:
    return _code(ret) == INTERRUPTED
