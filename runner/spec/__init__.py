"""The spec and its contract: the composed Hydra config resolved into a plain dict (here), its defaults settled
(settle.py), runner/spec.schema.json and the cross-field rules (rules.py) checked together (validate.py), the
editors' schemas (editor_schemas.py) and the machines a spec can name (hardware.py). Imports no backend."""

import hashlib
import json
import re
from functools import lru_cache

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .. import CONF_DIR, REPO_ROOT
from ..errors import UserError

_ENV_REF = re.compile(r"\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*)")


def to_spec(cfg: DictConfig) -> dict:
    """Resolve every interpolation; a broken one is bad input, not a crash."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "(config)"
        raise UserError(f"cannot resolve {key}: {exc.msg if hasattr(exc, 'msg') else exc}") from None


def env_sourced_paths(cfg: DictConfig) -> dict:
    """{'azure.subscription_id': 'AZURE_SUBSCRIPTION_ID', ...}: values that come from the environment."""
    found = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        elif isinstance(node, str) and (m := _ENV_REF.search(node)):
            found[prefix[:-1]] = m.group(1)

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return found


@lru_cache(maxsize=1)
def azure_env() -> dict:
    """{'subscription_id': 'AZURE_SUBSCRIPTION_ID', ...}, read from conf/config.yaml: the names' one home."""
    raw = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml")["azure"], resolve=False)
    return {key: m.group(1) for key, value in raw.items() if (m := _ENV_REF.search(str(value)))}


def azure_env_paths() -> dict:
    return {f"azure.{key}": var for key, var in azure_env().items()}


def get_path(spec: dict, dotted: str):
    node = spec
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dump_yaml(obj, flow_lists: bool = True) -> str:
    """The one YAML writer: spec.yaml (short lists inline) and the Azure resource files (flow_lists=False)."""
    import yaml

    return yaml.safe_dump(
        obj, sort_keys=False, allow_unicode=True, default_flow_style=None if flow_lists else False, width=100
    )


def resolve_path(path: str):
    """Absolute as given; a relative path from the current directory if it is there, else from the repository."""
    from pathlib import Path

    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    return REPO_ROOT / p
