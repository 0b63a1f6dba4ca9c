"""Taking back a run directory after a refusal: only the folders this command created.

Hydra creates the run directory (and any missing parents) before the runner can validate anything. A Hydra
callback notes, before that, the deepest folder on the way that already existed; a refused run removes its run
directory and the empty folders above it up to that one, never a folder it did not create.
"""
import hashlib
import re
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

_existed: Path | None = None  # the deepest folder of the run (or sweep) directory's path that existed before


def point_folder(override_dirname: str) -> str:
    """A sweep point's folder name from its overrides: one folder, even when a value is a path (data.dataset=/a/b)."""
    name = re.sub(r"[/\\:]+", "_", str(override_dirname)).strip("_") or "defaults"
    return name if len(name) <= 120 else f"{name[:100]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


# conf/config.yaml's hydra.sweep.subdir calls it; Hydra loads this module (its callback) before any folder is named
if not OmegaConf.has_resolver("point_folder"):
    OmegaConf.register_new_resolver("point_folder", point_folder)


def deepest_existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class NoteExistingFolders(Callback):
    """hydra.callbacks entry: runs before Hydra makes the run directory (or, for -m, the sweep directory)."""

    def on_run_start(self, config, **kwargs):
        self._note(config, "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs):
        self._note(config, "hydra.sweep.dir")

    @staticmethod
    def _note(config, key):
        global _existed
        from hydra.core.hydra_config import HydraConfig
        try:
            HydraConfig.instance().set_config(config)  # Hydra sets it only later; the run dir reads ${hydra:...}
            _existed = deepest_existing(Path(str(OmegaConf.select(config, key))))
        except Exception:  # unresolvable here: remove_created falls back to the run directory alone
            _existed = None


def remove_created(run_dir: Path, also: tuple[str, ...] = ()):
    """Remove run_dir if it is empty, and the empty folders above it that this command created.

    also: files in run_dir this command wrote (Hydra's multirun.yaml) that go with it; kept if the folder was there.
    """
    run_dir = Path(run_dir).absolute()
    existed = _existed or run_dir.parent
    if run_dir == existed or existed not in run_dir.parents:
        return  # it was there before this command: not ours to remove
    for name in also:
        (run_dir / name).unlink(missing_ok=True)
    path = run_dir
    while path != existed and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        path = path.parent
