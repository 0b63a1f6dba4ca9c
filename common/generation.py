"""The generation settings a scoring request may carry, and their defaults: their one definition.

Read by the scoring script (requests that leave a setting out get these), the MLflow signature (so MLflow's
own servers accept the same params) and the runner's chat rules. The chat stage and the flow send only what
the user set, so the endpoint's defaults apply everywhere else.
"""

# name -> (Python types accepted, MLflow param type, default)
PARAMS = {
    "max_new_tokens": (int, "long", 64),
    "temperature": ((int, float), "double", 0.0),  # 0 = greedy: reproducible answers
    "do_sample": (bool, "boolean", False),
    "top_p": ((int, float), "double", 1.0),
}
DEFAULTS = {name: default for name, (_, _, default) in PARAMS.items()}
# Below this temperature an answer is greedy: sampling at it already picks the likeliest token, and logits divided
# by a tinier one (1e-300 is a valid OpenAI value) overflow float32 to inf, which sampling cannot draw from
GREEDY_BELOW = 1e-5


def eos_ids(eos) -> list[int]:
    """A generation config's eos_token_id (one id, a list or tuple of them, or None) as a list of ids."""
    return [e for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]
