"""Validate a run spec: the JSON Schema first, then the cross-field rules; every problem at once."""
import difflib
import json
from functools import lru_cache
from pathlib import Path

from .errors import UserError
from .rules import RULES

SCHEMA_PATH = Path(__file__).with_name("spec.schema.json")


@lru_cache(maxsize=1)
def schema():
    return json.loads(SCHEMA_PATH.read_text())


@lru_cache(maxsize=1)
def _validator():
    from jsonschema import Draft202012Validator
    return Draft202012Validator(schema())


def _path(parts):
    return ".".join(str(p) for p in parts) or "(spec)"


def _schema_problems(spec):
    for err in sorted(_validator().iter_errors(spec), key=lambda e: list(map(str, e.absolute_path))):
        where = _path(err.absolute_path)
        if err.validator == "additionalProperties":
            known = list(err.schema.get("properties", {}))
            for key in sorted(set(err.instance) - set(known)):
                hint = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                tip = f"did you mean '{hint[0]}'?" if hint else "known keys: " + ", ".join(known)
                yield f"{_path([*err.absolute_path, key])}: unknown key (value {err.instance[key]!r}); {tip}"
        elif err.validator == "required":
            yield f"{where}: {err.message}"
        elif err.validator in ("enum", "const"):
            options = err.validator_value if err.validator == "enum" else [err.validator_value]
            yield f"{where}: {err.instance!r} is not one of {', '.join(map(repr, options))}"
        elif err.validator == "if":
            continue  # the 'then' errors say what is missing
        else:
            desc = err.schema.get("description", "")
            yield f"{where}: {err.instance!r} is invalid: {err.message}" + (f" ({desc})" if desc else "")


def problems(spec):
    """Every problem with the spec, as 'path: message' lines; empty when valid."""
    found = list(_schema_problems(spec))
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


def validate(spec):
    found = problems(spec)
    if found:
        raise UserError(["the run spec is invalid:"] + [f"  - {p}" for p in found])
    return spec
