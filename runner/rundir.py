"""Run directories: taking one back after a refusal (only the folders this command created), and one writer each.

Hydra creates the run directory (and any missing parents) before the runner can validate anything. A Hydra
callback notes, before that, every folder on the way that did not exist, as the kernel will name it (a run name or
directory with `..` in it creates folders outside run.output_root); a refused run removes those of them that are
empty, never a folder it did not create.
"""

import fcntl
import hashlib
import json
import os
import re
import socket
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from .errors import UserError

_missing: list[Path] | None = None  # the folders on the way to the run (or sweep) directory that did not exist


def point_folder(override_dirname: str) -> str:
    """A sweep point's folder name from its overrides: one folder, even when a value is a path (data.dataset=/a/b)."""
    name = re.sub(r"[/\\:]+", "_", str(override_dirname)).strip("_") or "defaults"
    return name if len(name) <= 120 else f"{name[:100]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


# conf/config.yaml's hydra.sweep.subdir calls it; Hydra loads this module (its callback) before any folder is named
if not OmegaConf.has_resolver("point_folder"):
    OmegaConf.register_new_resolver("point_folder", point_folder)


def run_name(spec, run_dir: Path) -> str:
    """What the run is: its run directory under run.output_root, e.g. default/local_tiny_sample/data.percent=25."""
    run_dir, root = Path(run_dir).resolve(), Path(spec["run"]["output_root"]).resolve()
    return str(run_dir.relative_to(root)) if root in run_dir.parents else run_dir.name


def missing_on_the_way(path: Path) -> list[Path]:
    """The folders mkdir(parents=True) would create for path, normalized (`a/../b` is b), deepest first."""
    path = Path(path).absolute()
    missing = []
    for step in (path, *path.parents):
        if step.exists():
            break
        folder = Path(os.path.normpath(step))
        if not folder.exists() and folder not in missing:
            missing.append(folder)
    return sorted(missing, key=lambda p: len(p.parts), reverse=True)


class NoteExistingFolders(Callback):
    """hydra.callbacks entry: runs before Hydra makes the run directory (or, for -m, the sweep directory)."""

    def on_run_start(self, config, **kwargs):
        self._note(config, "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs):
        self._note(config, "hydra.sweep.dir")

    @staticmethod
    def _note(config, key):
        global _missing
        from hydra.core.hydra_config import HydraConfig

        try:
            HydraConfig.instance().set_config(config)  # Hydra sets it only later; the run dir reads ${hydra:...}
            _missing = missing_on_the_way(Path(str(OmegaConf.select(config, key))))
        except Exception:  # unresolvable here: remove_created falls back to the run directory alone
            _missing = None


def remove_created(run_dir: Path, also: tuple[str, ...] = ()):
    """Remove run_dir if it is empty, and the empty folders on its way that this command created.

    also: files in run_dir this command wrote (Hydra's multirun.yaml) that go with it; kept if the folder was there.
    """
    run_dir = Path(os.path.normpath(Path(run_dir).absolute()))
    created = _missing if _missing is not None else [run_dir]  # no note (called in-process): the folder alone
    if run_dir not in created:
        return  # it was there before this command: not ours to remove
    for name in also:
        (run_dir / name).unlink(missing_ok=True)
    for folder in created:  # deepest first, so a parent is empty once its children are gone
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


# ---- one writer per run directory ---------------------------------------------------------------------------------
LOCK = ".lock"  # flock'd by the process that writes the run; the kernel releases it when that process exits or dies


def _holder_text(directory: Path) -> str:
    try:
        h = json.loads((directory / LOCK).read_text())
        return f"pid {h['pid']} on {h['host']} since {h['since']} ({h['command']})"
    except (OSError, ValueError, KeyError):
        return "another process (it is starting)"


def in_use(directory: Path) -> str | None:
    """Who writes this run directory now, or None; takes nothing and creates nothing."""
    try:
        fd = os.open(directory / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return _holder_text(directory)
    finally:
        os.close(fd)


_TEMP = re.compile(r"^\..+\.tmp(\d+)$")  # common.files.write_atomic's temp file: .<name>.tmp<pid>


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove the temp files of atomic writes that a kill cut short (their writer's pid is gone); a live writer's
    (an endpoint still serving from an earlier command) is left alone. Called by the run's new writer."""
    removed = []
    for path in Path(directory).rglob(".*.tmp*"):
        m = _TEMP.match(path.name)
        if m and path.is_file() and not _alive(int(m.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OneWriter:
    """`with OneWriter(run_dir):` this process is the run directory's only writer, or UserError (exit 2) names the
    one that is, and what to do. The lock is an flock on <run_dir>/.lock: no stale pid file survives a SIGKILL."""

    def __init__(self, directory: Path, command: str, what: str = "run"):
        """command: this process's command line as it may be kept (runner.redact.command_shown)."""
        self.directory, self.command, self.what, self.fd = Path(directory), command, what, None

    def __enter__(self):
        fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(
                f"{self.directory} is in use: {_holder_text(self.directory)} is running this "
                f"{self.what}. Wait for it to finish, or run elsewhere with another run.name=... "
                f"(or hydra.run.dir=...); plan=true and stages=[teardown] work meanwhile"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": self.command,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self.fd = fd
        remove_stale_temps(self.directory)
        return self

    def __exit__(self, *exc):
        os.ftruncate(self.fd, 0)
        os.close(self.fd)  # releases the lock
        self.fd = None
