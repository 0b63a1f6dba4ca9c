"""Settling a spec's defaults before it runs: what data.eval=auto and the default stages mean for this run."""

import copy

NOT_IN_SWEEPS = ("deploy", "chat")  # a sweep deploys once, afterwards: see the summary's deploy command


def key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def settle(spec: dict, overrides) -> dict:
    """The spec a run actually runs. overrides: the point's command-line overrides in a -m sweep, None otherwise.

    data.eval=auto becomes fixed in a sweep (every point evaluated on the same rows) and split in a single run
    (the tutorial's 80/20 of its slice). A sweep's default stages stop at register: it deploys once, afterwards.
    """
    spec = copy.deepcopy(spec)
    in_sweep = overrides is not None
    if spec["data"].get("eval") == "auto":
        spec["data"]["eval"] = "fixed" if in_sweep else "split"
    if spec["model"].get("chat_template"):  # the file as found from here: the job and the trainer need no cwd
        from . import resolve_path

        spec["model"]["chat_template"] = str(resolve_path(spec["model"]["chat_template"]))
    if in_sweep and not any(key_of(o) == "stages" for o in overrides):
        spec["stages"] = [s for s in spec["stages"] if s not in NOT_IN_SWEEPS]
    return spec
