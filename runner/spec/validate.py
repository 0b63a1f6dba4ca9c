"""Validate a run spec: the JSON Schema first, then the cross-field rules; every problem at once."""

import difflib
import json
from functools import lru_cache
from pathlib import Path

from ..errors import UserError
from .rules import RULES

SCHEMA_PATH = Path(__file__).parent.parent / "spec.schema.json"
# keys that were renamed to the library's own argument names: an old name in an override says where it went
RENAMED = {
    "train.epochs": "train.num_train_epochs",
    "train.lr_scheduler": "train.lr_scheduler_type",
    "train.warmup": "train.warmup_steps",
    "train.gradient_checkpointing": "train.activation_checkpointing",
    "train.lora.alpha": "train.lora.lora_alpha",
    "train.lora.dropout": "train.lora.lora_dropout",
}


@lru_cache(maxsize=1)
def schema():
    return json.loads(SCHEMA_PATH.read_text())


@lru_cache(maxsize=1)
def _validator():
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema())


def _path(parts):
    return ".".join(str(p) for p in parts) or "(spec)"


def _schema_problems(spec, validator=None):
    for err in sorted((validator or _validator()).iter_errors(spec), key=lambda e: list(map(str, e.absolute_path))):
        where = _path(err.absolute_path)
        if err.validator == "additionalProperties":
            known = list(err.schema.get("properties", {}))
            for key in sorted(set(err.instance) - set(known)):
                yield f"{_path([*err.absolute_path, key])}: unknown key (value {err.instance[key]!r}); " + did_you_mean(
                    _path([*err.absolute_path, key]), known
                )
        elif err.validator == "required":
            yield f"{where}: {err.message}"
        elif err.validator in ("enum", "const"):
            options = err.validator_value if err.validator == "enum" else [err.validator_value]
            in_list = any(isinstance(p, int) for p in err.absolute_path)
            yield (
                f"{where}: {err.instance!r} is not one of {', '.join(map(repr, options))}"
                + ("" if in_list else f", e.g. {where}={options[0]}")
            )
        elif err.validator == "if":
            continue  # the 'then' errors say what is missing
        else:
            desc = err.schema.get("description", "")
            yield f"{where}: {err.instance!r} is invalid: {err.message}" + (f" ({desc})" if desc else "")


def did_you_mean(path: str, known) -> str:
    if path in RENAMED:
        return f"did you mean '{RENAMED[path].rsplit('.', 1)[1]}'? ({path} was renamed to {RENAMED[path]})"
    hint = difflib.get_close_matches(path.rsplit(".", 1)[-1], list(known), n=1, cutoff=0.6)
    return f"did you mean '{hint[0]}'?" if hint else "known keys: " + ", ".join(known)


def renamed_override(override: str) -> str | None:
    """A message for a command-line override of a renamed key (Hydra itself would only say 'not in struct')."""
    from .settle import key_of

    key = key_of(override)
    if "=" in override and key in RENAMED:
        return f"{key} was renamed to {RENAMED[key]} (the library's own argument name): use {RENAMED[key]}=..."
    return None


def problems(spec, validator=None):
    """Every problem with the spec, as 'path: message' lines; empty when valid.

    validator: for another version of spec.schema.json (the config review validates a base commit with its own).
    """
    found = list(_schema_problems(spec, validator))
    bad = {p.split(":", 1)[0] for p in found}
    for rule in RULES:
        try:
            # a rule reading a value the schema already rejected would only add a confusing second message
            found += [f"{path}: {msg}" for path, msg in rule(spec) if not any(_related(path, b) for b in bad)]
        except (KeyError, TypeError, AttributeError):
            pass  # the part this rule reads is malformed: the schema errors above already say how
    return found


def _related(a: str, b: str) -> bool:
    a, b = a.split(".")[:2], b.split(".")[:2]
    return a[: len(b)] == b[: len(a)]


def validate(spec) -> None:
    found = problems(spec)
    if found:
        raise UserError(["the run spec is invalid:"] + [f"  - {p}" for p in found])
