"""python -m runner.review on a throwaway git repository: what a YAML change does to every composed run."""

import json
import shutil
import subprocess
import sys

import pytest

from runner import CONF_DIR, REPO_ROOT

pytestmark = pytest.mark.filterwarnings("ignore")


# The review's mechanics are tested on a smaller tree, the project's conf/ without these (16 combinations instead of
# 105: compute local and a100, the four models, data sample and 1pct), so these tests do not grow with every option
# the project adds; the whole tree is reviewed by test_no_change_is_one_line, and its every file composed by the
# parse-once test below.
LEFT_OUT = [f"compute/{c}.yaml" for c in ("a100x2", "a100x4", "h100x8", "a100_serverless", "cpu_e16s")] + [
    "model/tiny_phi4mini.yaml",
    "data/10rows.yaml",
]


def make_repo(into, left_out=()):
    """A git repository holding this project's conf/ (less left_out) and spec schema, committed once."""
    shutil.copytree(CONF_DIR, into / "conf")
    for path in left_out:
        (into / "conf" / path).unlink()
    (into / "runner").mkdir()
    shutil.copy(REPO_ROOT / "runner" / "spec.schema.json", into / "runner")
    for cmd in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"],
    ):
        subprocess.run(["git", *cmd], cwd=into, check=True)
    return into


@pytest.fixture
def repo(tmp_path):
    return make_repo(tmp_path, LEFT_OUT)


SECRET = "00000000-feed-beef-0000-000000000000"
OPTIONS = {
    g: len([p for p in (CONF_DIR / g).glob("*.yaml") if f"{g}/{p.name}" not in LEFT_OUT])
    for g in ("compute", "model", "data")
}
ALL = OPTIONS["compute"] * OPTIONS["model"] * OPTIONS["data"]  # every combination the review composes
HUB = ("phi3", "phi35", "phi4mini")  # the hub models: they extend conf/_base/model/phi3.yaml, which picks the recipe
PHI = OPTIONS["compute"] * len(HUB) * OPTIONS["data"]  # the combinations of those
PER_COMPUTE = OPTIONS["model"] * OPTIONS["data"]  # those of one compute option


def review(repo, *args, cwd=None):
    env = {"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin", "AZURE_SUBSCRIPTION_ID": SECRET}
    r = subprocess.run(
        [sys.executable, "-m", "runner.review", "--repo", str(repo), *args],
        cwd=cwd or repo,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert SECRET not in r.stdout + r.stderr  # values from the environment stay redacted
    return r.returncode, r.stdout, r.stderr


def both(repo, cwd=None):
    """One review as JSON (the CLI), and the Markdown the CLI prints for that result (the same report function)."""
    from runner.review.report import markdown

    code, raw, err = review(repo, "--format", "json", cwd=cwd)  # base: the merge base with main, here HEAD
    assert "Traceback" not in err, err
    result = json.loads(raw)
    return code, markdown(result), result


def edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def by_status(result, status):
    return [c for c in result["combinations"] if c["status"] == status]


def review_after_edit(repo, conf_file, old, new, status):
    """Edit conf/<conf_file>, review it (Markdown and JSON): exit code, text, JSON, the combinations in status."""
    edit(repo / "conf" / conf_file, old, new)
    code, text, result = both(repo)
    return code, text, result, by_status(result, status)


def test_no_change_is_one_line(tmp_path):
    """On the project's whole conf/: every combination composes, validates and is unchanged, also when the review
    runs in another directory (a shipped chat template, conf/templates/..., is the reviewed tree's file)."""
    from runner.review import combinations

    every = len(combinations(CONF_DIR))
    (tmp_path / "repo").mkdir()
    code, text, result = both(make_repo(tmp_path / "repo"), cwd=tmp_path)
    assert (
        code == 0 and f"**0 of {every} combinations change**" in text and f"{every} combination(s) unchanged." in text
    )
    assert result["summary"]["unchanged"] == every > ALL


def test_a_learning_rate_in_a_recipe_retrains_the_combinations_that_use_it(repo):
    code, text, result, changed = review_after_edit(
        repo, "train/seed_recipe.yaml", "learning_rate: 5.0e-6", "learning_rate: 1.0e-5", "changed"
    )
    assert code == 0 and len(changed) == PHI and {c["name"].split("_")[-2] for c in changed} == set(HUB)
    for c in changed:
        assert c["changes"] == [{"key": "train.learning_rate", "old": 5e-06, "new": 1e-05}]
        assert c["verdict"] == "retrains" and c["redo"] == ["train", "eval", "register", "deploy"] and "azure" not in c
    assert f"**{PHI} of {ALL} combinations change**" in text and "| `train.learning_rate` | `5e-06` | `1e-05` |" in text
    assert f"<details><summary>{PHI} combination(s) retrains (train, eval, register, deploy): 1 key(s)" in text
    assert f"{ALL - PHI} combination(s) unchanged." in text


def test_an_instance_type_shows_the_azure_and_cost_delta(repo):
    code, text, _, changed = review_after_edit(
        repo, "compute/a100.yaml", "Standard_NC24ads_A100_v4", "Standard_NC48ads_A100_v4", "changed"
    )
    assert code == 0 and len(changed) == PER_COMPUTE and all(c["name"].startswith("a100_") for c in changed)
    c = changed[0]
    assert c["azure"]["before"]["train_usd_per_hour"] == 3.67 and c["azure"]["after"]["train_usd_per_hour"] == 7.35
    assert c["azure"]["before"]["serve_usd_per_hour"] == c["azure"]["after"]["serve_usd_per_hour"]
    assert "- training: $3.67/h -> $7.35/h (+3.68 $/h)" in text
    assert "- cluster: Standard_NC24ads_A100_v4, 0..1 dedicated nodes -> Standard_NC48ads_A100_v4" in text
    assert "East US 2 list prices, 2025" in text
    code_md, printed, _ = review(repo)  # the CLI's Markdown is that report of the same result
    assert code_md == code and printed == text + "\n"


def test_a_typo_that_breaks_validation_exits_2_with_the_message(repo):
    code, text, _, invalid = review_after_edit(
        repo, "compute/a100.yaml", "precision: bf16", "precision: bf61", "invalid"
    )
    assert code == 2 and len(invalid) == PER_COMPUTE and all(c["was_valid"] for c in invalid)
    assert "compute.precision: 'bf61' is not one of 'fp32', 'bf16', 'bf16-mixed', 'fp16'" in invalid[0]["problems"][0]
    assert "### Fail validation (the review exits 2)" in text and "`a100_phi35_1pct` (stopped validating)" in text
    code, out, _ = review(repo, "--validate-only")  # the pre-commit hook
    assert code == 2 and f"{PER_COMPUTE} of {ALL} combinations do not validate" in out


def test_a_new_data_option_adds_its_combinations(repo):
    (repo / "conf" / "data" / "2pct.yaml").write_text(
        "# python -m runner data=2pct\ndefaults: [/_base/data/ultrachat@_here_, _self_]\npercent: 2\n"
    )
    code, text, result = both(repo)
    new = by_status(result, "new")
    assert code == 0 and result["options"]["added"] == {"data": ["2pct"]}
    assert len(new) == OPTIONS["compute"] * OPTIONS["model"]
    assert "- new: `data=2pct`" in text and f"{OPTIONS['compute'] * OPTIONS['model']} new combination(s)" in text
    assert result["summary"]["unchanged"] == ALL


def test_a_base_that_is_not_a_commit_is_a_clear_error(repo):
    code, _, err = review(repo, "--base", "no-such-branch")
    assert code == 2 and "not a commit" in err and "Traceback" not in err


def test_editor_schemas_are_current_and_catch_a_misspelt_key(tmp_path):
    import yaml
    from jsonschema import Draft202012Validator

    from runner.spec import editor_schemas

    assert editor_schemas.main(["--check"]) == 0, "run python -m runner.spec.editor_schemas"
    settings = json.loads((REPO_ROOT / ".vscode" / "settings.json").read_text())["yaml.schemas"]
    checked = 0
    for schema_file, globs in settings.items():
        validator = Draft202012Validator(json.loads((REPO_ROOT / schema_file).read_text()))
        for pattern in globs:
            for path in REPO_ROOT.glob(pattern):
                errors = list(validator.iter_errors(yaml.safe_load(path.read_text())))
                assert not errors, (path, [e.message for e in errors])
                checked += 1
    assert checked == len([p for p in CONF_DIR.rglob("*.yaml") if p.parts[-3:-1] != ("hydra", "help")])  # --help's page
    a100 = yaml.safe_load((CONF_DIR / "compute" / "a100.yaml").read_text())
    a100["instance_typ"] = a100.pop("instance_type")
    compute = Draft202012Validator(json.loads((REPO_ROOT / "runner" / "schemas" / "compute.schema.json").read_text()))
    assert [e.message for e in compute.iter_errors(a100)] == [
        "Additional properties are not allowed ('instance_typ' was unexpected)"
    ]


def test_parsing_each_file_once_composes_exactly_what_hydra_composes_and_records_what_each_read():
    """On combinations that use every option of every group (so each file's one parse is reused by later
    compositions): the same specs and problems as Hydra alone, and each composition's record of the files it read,
    which decides what the base side composes again."""
    from runner.review import GROUPS, compose_all, options
    from runner.spec.validate import schema

    opts = options(CONF_DIR)
    covering = {
        "_".join(opts[g][i % len(opts[g])] for g in GROUPS): i for i in range(max(len(v) for v in opts.values()))
    }
    reads = {}
    fast = compose_all(CONF_DIR, schema(), only=set(covering), reads=reads)
    assert len(fast) == len(covering) and fast == compose_all(CONF_DIR, schema(), fast=False, only=set(covering))
    for name in covering:
        compute, model, data = (opts[g][covering[name] % len(opts[g])] for g in GROUPS)
        assert {"config.yaml", f"compute/{compute}.yaml", f"model/{model}.yaml", f"data/{data}.yaml"} <= reads[name]
        assert all((CONF_DIR / path).is_file() for path in reads[name])


def test_the_base_unpacks_on_a_python_without_tar_filters(repo, tmp_path, monkeypatch):
    """Debian 12's Python 3.11.2 has no tarfile filters: the base's conf/ still unpacks, and a member that would
    land outside the folder, or a link, is refused instead of written."""
    import io
    import tarfile

    from runner import review
    from runner.errors import UserError

    monkeypatch.delattr(tarfile, "data_filter", raising=False)  # absent already on 3.11.0-3.11.3
    conf, schema, commit = review.checkout(repo, "main", tmp_path / "base")
    assert (conf / "config.yaml").is_file() and schema["type"] == "object" and len(commit) == 40
    for name, kind in (("../outside.yaml", tarfile.REGTYPE), ("conf/link.yaml", tarfile.SYMTYPE)):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as archive:
            member = tarfile.TarInfo(name)
            member.type = kind
            archive.addfile(member, io.BytesIO(b""))
        buf.seek(0)
        with tarfile.open(fileobj=buf) as archive, pytest.raises(UserError, match="does not unpack"):
            review.extract(archive, tmp_path / "bad")
    assert not (tmp_path / "outside.yaml").exists() and not (tmp_path / "bad").exists()
