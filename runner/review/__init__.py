"""The config review: python -m runner.review [--base REF] [--format markdown|json] [--repo DIR] [--validate-only]

What a change to conf/ (or runner/spec.schema.json) does to every composed run, before it costs anything:
every combination of the config groups is composed at the base ref and in the working tree, in this one
process, validated with each side's own schema, and compared: changed keys, the stages a re-run would redo,
Azure resource and hourly-cost deltas, combinations that stopped validating, options added or removed.
Exit status 2 when any combination of the working tree fails validation. runner/review/report.py renders it.
"""

import argparse
import io
import itertools
import json
import subprocess
import sys
import tarfile
import tempfile
from contextlib import nullcontext
from pathlib import Path

from .. import CONF_DIR, REPO_ROOT
from ..errors import UserError
from ..redact import redacted
from ..registry import STAGES
from ..spec import env_sourced_paths, get_path, hardware, to_spec
from ..spec.validate import problems

GROUPS = ("compute", "model", "data")
# Hydra's own groups that no run spec reads (help texts, logging, launcher, sweeper, env, output): dropped from each
# composition's defaults list, about 40 % of its time; the spec composed is the same (a test compares)
HYDRA_UNUSED = [
    "~hydra/help",
    "~hydra/hydra_help",
    "~hydra/hydra_logging",
    "~hydra/launcher",
    "~hydra/sweeper",
    "~hydra/env",
    "~hydra/output",
]
ABSENT = "<absent>"


def options(conf_dir: Path) -> dict:
    """{group: [option, ...]}: the files of each group, without the bases (a leading _)."""
    return {
        g: sorted(p.stem for p in (Path(conf_dir) / g).glob("*.yaml") if not p.stem.startswith("_")) for g in GROUPS
    }


def parse_each_file_once():
    """Hydra reads and parses every YAML file again for each composition; here each is parsed once (the patch is in
    common/patches.py). Same results (a test compares), about 15 % less time for the review. Yields the set of
    conf files each composition reads."""
    from common.patches import hydra_parse_each_file_once

    return hydra_parse_each_file_once()


def combinations(conf_dir: Path) -> dict[str, list[str]]:
    """{'a100_phi35_1pct': ['compute=a100', 'model=phi35', 'data=1pct']} for every combination of the groups."""
    opts = options(conf_dir)
    return {
        "_".join(combo): [f"{g}={o}" for g, o in zip(GROUPS, combo)]
        for combo in itertools.product(*(opts[g] for g in GROUPS))
    }


def compose_all(
    conf_dir: Path, schema: dict, fast: bool = True, only: set[str] | None = None, reads: dict | None = None
) -> dict:
    """{'a100_phi35_1pct': {'spec': redacted spec or None, 'problems': [...]}} for every combination (or those named
    in only). With fast, reads (when given) gets {name: the conf files that composition read}."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema)  # once: every combination is checked against the same schema
    out = {}
    GlobalHydra.instance().clear()
    try:
        with (
            parse_each_file_once() if fast else nullcontext(set()) as read,
            initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"),
        ):
            for name, choices in combinations(conf_dir).items():
                if only is not None and name not in only:
                    continue
                read.clear()
                try:  # plan=true: a review needs no workspace, as plan mode needs none
                    cfg = compose("config", overrides=[*choices, "plan=true", *(HYDRA_UNUSED if fast else [])])
                    spec = to_spec(cfg)
                    checked = in_tree(spec, Path(conf_dir).resolve().parent)
                    out[name] = {
                        "spec": redacted(spec, env_sourced_paths(cfg)),
                        "problems": problems(checked, validator),
                    }
                    if reads is not None and fast:
                        reads[name] = set(read)
                except Exception as exc:  # a file that no longer composes is a finding, not a crash
                    out[name] = {"spec": None, "problems": [f"does not compose: {str(exc).splitlines()[0]}"]}
    finally:
        GlobalHydra.instance().clear()
    return out


def in_tree(spec: dict, root: Path) -> dict:
    """The spec as validated: a relative model.chat_template (conf/templates/...) is the reviewed tree's file, found
    from its root whatever the directory the review runs in (the spec compared keeps the path as written)."""
    template = spec["model"].get("chat_template")
    if not template or Path(template).is_absolute():
        return spec
    return {**spec, "model": {**spec["model"], "chat_template": str(root / template)}}


def _chunk(conf_dir: Path, schema: dict, names: list[str]) -> tuple[dict, dict]:
    reads = {}
    return compose_all(conf_dir, schema, only=set(names), reads=reads), reads


def compose_on_every_core(conf_dir: Path, schema: dict, only: set[str] | None = None, reads: dict | None = None):
    """compose_all, the combinations shared out between this process and forked ones, one per core: composing is
    pure Python, most of the review's time."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    names = [n for n in combinations(conf_dir) if only is None or n in only]
    workers = min(len(os.sched_getaffinity(0)), max(1, len(names) // 8))  # a handful each, or not worth a fork
    out, seen = {}, {}
    if workers > 1:
        with ProcessPoolExecutor(workers - 1, mp_context=multiprocessing.get_context("fork")) as pool:
            pending = [pool.submit(_chunk, conf_dir, schema, names[i::workers]) for i in range(1, workers)]
            for part in [_chunk(conf_dir, schema, names[0::workers])] + [p.result() for p in pending]:
                out.update(part[0])
                seen.update(part[1])
    else:
        out, seen = _chunk(conf_dir, schema, names)
    if reads is not None:
        reads.update(seen)
    return out


def yaml_files(conf_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(conf_dir).as_posix(): p.read_bytes() for p in sorted(Path(conf_dir).rglob("*.yaml"))}


def compose_base(base_conf: Path, base_schema: dict, head_conf: Path, head_schema: dict, head: dict, reads: dict):
    """The base side, composing only what the change can reach: a combination whose every conf file is the same at
    the base composes to what it composes in the working tree (same files, same schema), so its result is reused.
    Added or removed files (a default can be optional), a changed schema, or a combination that did not compose:
    composed again."""
    base_files, head_files = yaml_files(base_conf), yaml_files(head_conf)
    if base_schema != head_schema or set(base_files) != set(head_files):
        return compose_on_every_core(base_conf, base_schema)
    changed = {path for path, text in head_files.items() if base_files[path] != text}
    again = {name for name in head if name not in reads or reads[name] & changed}
    reused = {n: e for n, e in head.items() if n not in again}
    return {**reused, **compose_on_every_core(base_conf, base_schema, only=again)} if again else reused


def flat(node, prefix="") -> dict:
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    out = {}
    for k, v in node.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def changes(old: dict, new: dict) -> list[dict]:
    a, b = flat(old), flat(new)
    return [
        {"key": k, "old": a.get(k, ABSENT), "new": b.get(k, ABSENT)}
        for k in sorted(set(a) | set(b))
        if a.get(k, ABSENT) != b.get(k, ABSENT)
    ]


def redone(old: dict, new: dict) -> list[str]:
    """The stages a re-run would redo: inputs changed, or an upstream stage's outputs will."""
    out = []
    for stage in STAGES:
        if stage.always:
            continue  # chat and teardown run every time anyway
        if any(get_path(old, p) != get_path(new, p) for p in stage.depends_on) or set(stage.upstream) & set(out):
            out.append(stage.name)
    return out


def verdict(stages: list[str]) -> str:
    if "train" in stages:
        return "retrains"
    also = " and re-evaluates" if "eval" in stages else ""
    if "register" in stages:
        return "re-registers and redeploys" + also
    if "deploy" in stages:
        return "redeploys" + (also or " only")
    if "eval" in stages:
        return "re-evaluates only"
    return "re-splits data only" if "data" in stages else "nothing"


def azure(spec: dict) -> dict | None:
    """The Azure resources a run of this spec uses, and their hourly list hardware."""
    if not spec or spec["compute"]["kind"] != "azureml":
        return None
    c, d = spec["compute"], spec["deploy"]
    price = hardware.APPROX_USD_PER_HOUR.get
    train = price(c["instance_type"])
    serve = price(d["instance_type"])
    return {
        "cluster": f"{c['instance_type']}, {c['min_instances']}..{c['max_instances']} {c['tier']} nodes",
        "job": f"{c['instance_count']} node(s) x {c['processes_per_instance']} process(es)",
        "endpoint": f"{d['instance_type']} x{d['instance_count']}",
        "train_usd_per_hour": None if train is None else round(train * c["instance_count"], 2),
        "serve_usd_per_hour": None if serve is None else round(serve * d["instance_count"], 2),
    }


def review(base: dict, head: dict, base_opts: dict, head_opts: dict) -> dict:
    combos = []
    for name in sorted(set(base) | set(head)):
        b, h = base.get(name), head.get(name)
        entry = {"name": name, "problems": h["problems"] if h else []}
        if h is None:
            entry.update(status="removed")
        elif h["problems"]:
            entry.update(status="invalid", was_valid=None if b is None else not b["problems"])
        elif b is None:
            entry.update(status="new")
        elif b["problems"] or b["spec"] is None:
            entry.update(status="fixed")
        else:
            diff = changes(b["spec"], h["spec"])
            stages = redone(b["spec"], h["spec"])
            entry.update(status="changed" if diff else "unchanged", changes=diff, redo=stages, verdict=verdict(stages))
            before, after = azure(b["spec"]), azure(h["spec"])
            if diff and (before or after) and before != after:
                entry["azure"] = {"before": before, "after": after}
        combos.append(entry)
    added = {g: sorted(set(head_opts[g]) - set(base_opts.get(g, []))) for g in GROUPS}
    removed = {g: sorted(set(base_opts.get(g, [])) - set(head_opts[g])) for g in GROUPS}
    statuses = [c["status"] for c in combos]
    return {
        "options": {"added": {g: v for g, v in added.items() if v}, "removed": {g: v for g, v in removed.items() if v}},
        "combinations": combos,
        "prices": hardware.AS_OF,
        "summary": {s: statuses.count(s) for s in ("changed", "unchanged", "invalid", "new", "removed", "fixed")},
    }


def default_base(repo: Path) -> str:
    """The merge base with the default branch (origin's HEAD, else main or master)."""

    def git(*args):
        r = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    branch = git("symbolic-ref", "--short", "refs/remotes/origin/HEAD") or next(
        (b for b in ("origin/main", "main", "origin/master", "master") if git("rev-parse", "--verify", "-q", b)), "HEAD"
    )
    return git("merge-base", "HEAD", branch) or branch


def extract(archive: tarfile.TarFile, into: Path) -> None:
    """The archive's files under into. Python 3.11.4+ filters members itself ("data"); Debian 12's 3.11.2 has no
    filter, so there only plain files and folders with relative paths inside into are taken (git archive of
    conf/ makes nothing else)."""
    if hasattr(tarfile, "data_filter"):
        archive.extractall(into, filter="data")
        return
    for member in archive.getmembers():
        parts = Path(member.name).parts
        if not (member.isfile() or member.isdir()) or Path(member.name).is_absolute() or ".." in parts:
            raise UserError(f"the archive of the base commit holds {member.name!r}, which the review does not unpack")
    archive.extractall(into)


def checkout(repo: Path, ref: str, into: Path) -> tuple[Path, dict, str]:
    """conf/ and the schema as they were at ref: (conf dir, schema, commit)."""
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", f"{ref}^{{commit}}"], capture_output=True, text=True
    )
    if commit.returncode:
        raise UserError(f"{ref!r} is not a commit in {repo}; pass --base <branch, tag or commit>")
    tar = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", ref, "conf", "runner/spec.schema.json"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        extract(archive, into)
    return into / "conf", json.loads((into / "runner" / "spec.schema.json").read_text()), commit.stdout.strip()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.review", description=__doc__.splitlines()[2])
    p.add_argument("--base", help="git ref to compare with (default: the merge base with the default branch)")
    p.add_argument("--format", choices=["markdown", "json"], default="markdown")
    p.add_argument("--repo", type=Path, default=REPO_ROOT, help="the repository whose conf/ is reviewed")
    p.add_argument("--validate-only", action="store_true", help="only validate every combination of the working tree")
    args = p.parse_args(argv)
    from .report import markdown, validation

    repo = args.repo.resolve()
    conf = repo / "conf" if (repo / "conf").is_dir() else CONF_DIR
    head_schema = json.loads((repo / "runner" / "spec.schema.json").read_text())
    if args.validate_only:
        text, bad = validation(compose_on_every_core(conf, head_schema))
        print(text)
        return 2 if bad else 0
    base_ref = args.base or default_base(repo)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            base_conf, base_schema, commit = checkout(repo, base_ref, Path(tmp))
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        reads = {}
        head = compose_on_every_core(conf, head_schema, reads=reads)
        base = compose_base(base_conf, base_schema, conf, head_schema, head, reads)
        base_opts = options(base_conf)
    result = {
        "base": {"ref": base_ref, "commit": commit},
        "head": "working tree",
        **review(base, head, base_opts, options(conf)),
    }
    print(json.dumps(result, indent=2, default=str) if args.format == "json" else markdown(result))
    return 2 if result["summary"]["invalid"] else 0
