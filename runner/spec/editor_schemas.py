"""JSON Schemas for the config group files, derived from runner/spec.schema.json, for editors.

python -m runner.spec.editor_schemas           writes runner/schemas/<group>.schema.json (and config.schema.json)
python -m runner.spec.editor_schemas --check   exits 1 when a checked-in schema is out of date (a test runs it)

.vscode/settings.json maps each to its files, so an editor with a YAML language server underlines a misspelt key
in conf/compute/a100.yaml before anything runs. A group file may be partial (a base, or a file that extends one),
so nothing is required, and string patterns are left to the runner (a file may hold ${...} interpolations);
unknown keys and wrong types stay errors.
"""

import copy
import json
import sys

from .validate import SCHEMA_PATH, schema

OUT = SCHEMA_PATH.parent / "schemas"
GROUPS = ("compute", "model", "data", "train")
DEFAULTS = {
    "description": "Hydra defaults list: the base this file extends (e.g. [/_base/compute/azureml@_here_, _self_]), or overrides "
    "of other groups",
    "type": "array",
    "items": {"type": ["string", "object"]},
}


def _relaxed(node):
    if isinstance(node, dict):
        # a file may be partial, and may hold ${...} interpolations where the resolved spec holds a pattern
        return {k: _relaxed(v) for k, v in node.items() if k not in ("required", "if", "then", "pattern")}
    if isinstance(node, list):
        return [_relaxed(v) for v in node]
    return node


def _document(title: str, node: dict) -> dict:
    node = _relaxed(copy.deepcopy(node))
    node["properties"] = {"defaults": DEFAULTS, **node["properties"]}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title, **node}


def schemas() -> dict:
    spec = schema()  # the runner's own copy of spec.schema.json (_document copies before changing it)
    out = {
        f"{g}.schema.json": _document(
            f"conf/{g}/*.yaml: one option of the {g} group (conf/_base/{g}/*.yaml: its bases)", spec["properties"][g]
        )
        for g in GROUPS
    }
    top = {k: v for k, v in spec["properties"].items() if k not in GROUPS}
    top["hydra"] = {"description": "Hydra's own settings (run directory, sweeps, callbacks).", "type": "object"}
    out["config.schema.json"] = _document(
        "conf/config.yaml: the primary config", {"type": "object", "additionalProperties": False, "properties": top}
    )
    return {name: json.dumps(doc, indent=1) + "\n" for name, doc in out.items()}


def main(argv=None) -> int:
    check = "--check" in (argv if argv is not None else sys.argv[1:])
    docs = schemas()
    stale = [name for name, text in docs.items() if not (OUT / name).is_file() or (OUT / name).read_text() != text]
    if check:
        if stale:
            print(f"out of date: {', '.join(stale)}; run python -m runner.spec.editor_schemas", file=sys.stderr)
        return 1 if stale else 0
    OUT.mkdir(exist_ok=True)
    for name, text in docs.items():
        (OUT / name).write_text(text)
    print(f"wrote {len(docs)} schemas to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
