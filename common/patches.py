"""Every place this project reaches into a library's internals, in one module, each guarded by the versions it was
written for: on another version it stops with a clear error instead of misbehaving quietly.

- `uvicorn_on_listening`: uvicorn has no public hook for "now accepting connections"; the endpoint and the chat page
  write their ready file / print their URL from a wrapped `Server.startup` (serving/asgi.py).
- `accelerate_fsdp_on_the_cpu`: accelerate drops the FSDP plugin for CPU processes (trainer/distributed.py).
- `hydra_parse_each_file_once`: Hydra parses every YAML file again for each composition; the review caches them
  (runner/review).

Standard library at import time (the libraries are imported by the patch that needs them), so the training job,
the deployment and the runner can all import it. To move to a new version of one of these libraries: check the
internal named here still behaves as described, then add the version to WRITTEN_FOR.
"""

from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version

# distribution -> the version prefixes its patch was written for (and tested with)
WRITTEN_FOR = {"uvicorn": ("0.54.",), "accelerate": ("1.15.",), "hydra-core": ("1.3.",)}


class UnsupportedVersion(RuntimeError):
    """A patched library is at a version its patch was not written for."""


def require(dist: str, what: str) -> str:
    """The installed version of dist, or UnsupportedVersion naming the patch, the versions it knows and the fix."""
    try:
        have = version(dist)
    except PackageNotFoundError:
        have = "not installed"
    known = WRITTEN_FOR[dist]
    if not have.startswith(known):
        raise UnsupportedVersion(
            f"{what} reaches into {dist}'s internals and was written for {dist} {', '.join(v + 'x' for v in known)}, "
            f"but {have} is installed: install the pinned versions from the repository root "
            f"(.venv/bin/python -m pip install -c constraints.txt -e .), or check "
            f"the patch in common/patches.py against {have} and add it to WRITTEN_FOR"
        )
    return have


def uvicorn_on_listening(server, on_listening):
    """Call on_listening() once the uvicorn.Server has started accepting connections (after its startup)."""
    require("uvicorn", "the endpoint's ready signal")
    original_startup = server.startup

    async def startup(sockets=None):
        await original_startup(sockets=sockets)
        if server.started:
            on_listening()

    server.startup = startup


@contextmanager
def accelerate_fsdp_on_the_cpu():
    """While this is open, an AcceleratorState built with an FSDP plugin in CPU processes is FSDP, as on GPUs.

    accelerate 1.15 calls torchrun's processes on the CPU MULTI_CPU and drops the FSDP plugin without a word (its
    FSDP branch lists only accelerator devices), so a CPU run would silently replicate the model (DDP). From the
    marked state on, accelerate's own code runs: fully_shard, sharded checkpoints, gathered state dicts.
    """
    require("accelerate", "FSDP2 on CPU processes")
    import accelerate.state as state

    original = state.AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == state.DistributedType.MULTI_CPU:
            self.distributed_type = state.DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin

    state.AcceleratorState.__init__ = init
    try:
        yield
    finally:
        state.AcceleratorState.__init__ = original


@contextmanager
def hydra_parse_each_file_once():
    """While this is open, Hydra's config sources parse each YAML file once; every load gets a fresh config made
    from the parsed content, so no composition can change another's. Yields a set that collects the config paths
    (`model/phi3.yaml`) read from the config directory (not Hydra's own packaged configs): the caller clears it
    before a composition and reads it after, to know the files that composition depends on."""
    require("hydra-core", "the review's config cache")
    from hydra.core.plugins import Plugins

    # Hydra's first plugin scan executes its core plugin modules again, defining new config source classes: scan
    # first, then patch the classes Hydra instantiates (patching the ones imported before the scan does nothing)
    Plugins.instance()
    from hydra._internal.core_plugins.file_config_source import FileConfigSource
    from hydra._internal.core_plugins.importlib_resources_config_source import ImportlibResourcesConfigSource
    from hydra.plugins.config_source import ConfigResult
    from omegaconf import OmegaConf

    cache, originals, read = {}, {}, set()

    def cached(original):
        def load_config(self, config_path):
            if isinstance(self, FileConfigSource):
                read.add(config_path if config_path.endswith(".yaml") else f"{config_path}.yaml")
            key = (type(self).__name__, self.path, config_path)
            if key not in cache:
                r = original(self, config_path)
                cache[key] = (OmegaConf.to_container(r.config), r.path, r.provider, r.header)
            content, path, provider, header = cache[key]
            return ConfigResult(config=OmegaConf.create(content), path=path, provider=provider, header=dict(header))

        return load_config

    for source in (FileConfigSource, ImportlibResourcesConfigSource):
        originals[source] = source.load_config
        source.load_config = cached(source.load_config)
    try:
        yield read
    finally:
        for source, original in originals.items():
            source.load_config = original
