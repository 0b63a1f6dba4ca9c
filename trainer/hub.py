"""Decide, before importing huggingface libraries, whether the hub can be reached at all.

Without this, every hub call on an offline machine retries for tens of seconds before failing.
"""
import os
import socket
from functools import lru_cache


@lru_cache(maxsize=1)
def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def go_offline_unless_reachable() -> bool:
    """Set HF_HUB_OFFLINE=1 when the hub is out of reach; returns whether we are online.

    Must run before transformers/datasets/huggingface_hub are imported: they read the variable once.
    """
    online = hub_reachable()
    if not online:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    return online
