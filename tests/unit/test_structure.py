"""The shape of the tree: one backend dispatcher, configs that inherit, one home for each fact, small modules."""

from pathlib import Path

import pytest
import yaml

from runner import CONF_DIR, REPO_ROOT
from runner.registry import STAGES
from runner.spec.validate import schema

from ..support.helpers import runner_cli


def test_every_stage_has_a_module_for_every_compute_kind():
    kinds = set(schema()["properties"]["compute"]["properties"]["kind"]["enum"])
    for stage in STAGES:
        assert set(stage.backends) == kinds, stage.name
        for kind in kinds:
            assert callable(stage.load(kind).run), (stage.name, kind)


def test_no_stage_module_knows_about_a_backend():
    """runner/stages/ holds the stages that run the same everywhere; backends live in their own packages. Checked on
    the code (imports, subscripts), not on its comments; the one dispatcher is registry.py."""
    import ast

    for path in (REPO_ROOT / "runner" / "stages").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                assert not module.startswith(("..azure", "..local", "runner.azure", "runner.local", "azure")), path
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith(("azure", "runner.azure", "runner.local")) for a in node.names), path
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                assert node.slice.value != "kind", f"{path.name}: reads compute.kind; dispatch in registry.py"
    mentions = [
        str(p.relative_to(REPO_ROOT))
        for p in (REPO_ROOT / "runner").rglob("*.py")
        if 'compute"]["kind"]' in p.read_text()
    ]
    # the dispatcher, the Azure-only rules, and the config review's report of Azure resources (it runs no stage)
    assert sorted(mentions) == ["runner/registry.py", "runner/review/__init__.py", "runner/spec/rules.py"]


def test_azure_computes_extend_one_base():
    base = yaml.safe_load((CONF_DIR / "_base" / "compute" / "azureml.yaml").read_text())
    for name in ("a100", "cpu_e16s"):
        own = yaml.safe_load((CONF_DIR / "compute" / f"{name}.yaml").read_text())
        assert own["defaults"] == ["/_base/compute/azureml@_here_", "_self_"]
        assert not set(own) & set(base), f"{name}.yaml repeats keys of _base/compute/azureml.yaml"
        assert len(own) <= 8


def test_a_new_sku_is_a_short_file(tmp_path):
    """A third compute option: copy conf/, add seven lines, and it composes into a valid plan."""
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "compute" / "h100.yaml").write_text(
        "# python -m runner compute=h100\ndefaults: [/_base/compute/azureml@_here_, _self_]\ndevice: cuda\nprecision: bf16\n"
        "cluster_name: gpu-h100-cluster\ninstance_type: Standard_NC40ads_H100_v5\n"
        "image: mcr.microsoft.com/azureml/curated/acft-hf-nlp-gpu:59\nenvironment_name: phi-3-h100\n"
    )
    r = runner_cli("--config-dir", str(conf), "compute=h100", "model=phi3", "plan=true", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Standard_NC40ads_H100_v5" in r.stdout and "about $6.98/h" in r.stdout
    assert "GiB of the 94 GiB on Standard_NC40ads_H100_v5 (1x H100 NVL)" in r.stdout  # its GPU is data too


def test_every_option_file_is_headed_by_its_command():
    for path in CONF_DIR.rglob("*.yaml"):
        first = path.read_text().splitlines()[0]
        if path.parts[-3] == "_base":
            assert first.startswith("# The ") and "not an option itself" in first, path
        else:
            assert first.startswith("# python -m runner"), path


@pytest.mark.parametrize(
    "old,new",
    [
        ("train.epochs", "train.num_train_epochs"),
        ("train.gradient_checkpointing", "train.activation_checkpointing"),
        ("train.lora.alpha", "train.lora.lora_alpha"),
    ],
)
def test_an_old_key_name_says_where_it_went(tmp_path, old, new):
    for arg in (f"{old}=1", f"+{old}=1"):
        r = runner_cli(arg, "plan=true", cwd=tmp_path)
        assert r.returncode == 2 and new in r.stderr and "Traceback" not in r.stderr, r.stderr
    from runner.spec.validate import problems
    from tests.conftest import compose_once

    spec = compose_once(tmp_path, f"+{old}=1")
    assert any(f"did you mean '{new.rsplit('.', 1)[1]}'?" in p for p in problems(spec))
    assert not (tmp_path / "outputs").exists()


def test_train_keys_are_sft_config_arguments(tmp_path):
    """grep leads from the YAML to TRL's docs: every train key but lora is an SFTConfig field."""
    from trl import SFTConfig

    for recipe in (CONF_DIR / "train").glob("*.yaml"):
        keys = set(yaml.safe_load(recipe.read_text())) - {"lora", "defaults"}
        assert keys <= set(SFTConfig.__dataclass_fields__), (recipe.name, keys - set(SFTConfig.__dataclass_fields__))
        lora = set(yaml.safe_load(recipe.read_text()).get("lora", {})) - {"enabled"}  # a recipe may extend another
        from peft import LoraConfig

        assert lora <= set(LoraConfig.__dataclass_fields__), recipe.name


def test_generation_defaults_have_one_home(trained_run):
    """The scoring defaults, the MLflow signature and the flow all come from common/generation.py."""
    import mlflow

    from common.generation import DEFAULTS
    from serving import contract
    from serving.contract import Params
    from trainer import tracking

    assert {k: contract.Params.model_fields[k].default for k in DEFAULTS} == DEFAULTS
    assert Params().model_dump() == {**DEFAULTS, "return_full_text": False}
    out = trained_run[2]["stages"]["train"]["outputs"]
    tracking.point_at(out["tracking_uri"])
    sig = mlflow.models.get_model_info(out["model_uri"]).signature
    assert {p.name: p.default for p in sig.params.params} == Params().model_dump()
    flow = yaml.safe_load((REPO_ROOT / "flow" / "flow.dag.yaml").read_text())
    assert not set(flow["inputs"]) & set(DEFAULTS) and flow["inputs"]["params"]["default"] == {}
    chat = yaml.safe_load((CONF_DIR / "config.yaml").read_text())["chat"]
    assert not set(chat) & (set(DEFAULTS) - {"max_new_tokens"})  # the chat page's settings are no generation default


def test_the_experiment_name_reaches_local_runs_and_azure_jobs(tmp_path):
    r = runner_cli("compute=a100", "plan=true", "run.experiment_name=my-exp", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    job = yaml.safe_load(next((tmp_path / "outputs").rglob("job.yml")).read_text())
    assert job["experiment_name"] == "my-exp"
    r = runner_cli("plan=true", "stages=[train]", "run.experiment_name=my-exp", cwd=tmp_path)
    assert "experiment my-exp" in r.stdout


def test_the_requirements_have_one_reader():
    """The Azure environments start from trainer/requirements.txt and change only torch and MLflow."""
    from runner.azure import environments as envs
    from trainer.files import pinned_requirements

    pins = pinned_requirements()
    assert pins and all("#" not in p and p.strip() == p and "==" in p for p in pins)
    for device in ("cuda", "cpu"):
        job = envs.packages(envs.train_pip(device))
        changed = {envs.name_of(p) for p in set(job) ^ set(pins)}
        assert changed == {"torch", "mlflow", "azureml-mlflow"}, changed


def top_level_imports(package: str):
    """(module path, top-level package) for every import in a package, at module level or in a function."""
    import ast

    for path in (REPO_ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                yield from ((path.relative_to(REPO_ROOT), a.name.split(".")[0]) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level:
                yield path.relative_to(REPO_ROOT), node.module.split(".")[0]


def test_training_serving_and_what_they_share_stay_apart():
    """common/ is the standard library only (common/patches.py imports the library it patches, inside the patch);
    trainer/ (the Azure job's code) and serving/ (the deployment's) import common/ and never each other, nor the
    runner, Hydra or Prompt flow."""
    import ast
    import sys

    stdlib = sys.stdlib_module_names | {"common"}
    patches = Path("common/patches.py")
    assert {(str(m), p) for m, p in top_level_imports("common") if p not in stdlib and m != patches} == set()
    patched = {p for m, p in top_level_imports("common") if m == patches} - stdlib
    assert patched == {"accelerate", "hydra", "omegaconf"}  # uvicorn: its Server is handed in
    module_level = ast.parse((REPO_ROOT / patches).read_text()).body
    names = [
        getattr(n, "module", None) or n.names[0].name
        for n in module_level
        if isinstance(n, (ast.Import, ast.ImportFrom))
    ]
    assert names and all(name.split(".")[0] in stdlib for name in names)


def test_a_patch_of_library_internals_refuses_a_version_it_was_not_written_for(monkeypatch):
    from common import patches

    assert patches.require("uvicorn", "x").startswith("0.54.")  # the pinned versions pass
    monkeypatch.setitem(patches.WRITTEN_FOR, "uvicorn", ("0.1.",))
    with pytest.raises(patches.UnsupportedVersion) as err:
        patches.uvicorn_on_listening(object(), lambda: None)
    said = str(err.value)
    assert "the endpoint's ready signal" in said and "written for uvicorn 0.1.x" in said and "0.54." in said
    assert "(.venv/bin/python -m pip install -c constraints.txt -e .)" in said and "common/patches.py" in said
    for package, never in (
        ("trainer", {"serving", "runner", "hydra", "azure", "promptflow"}),
        ("serving", {"trainer", "runner", "hydra", "promptflow"}),
    ):
        assert {(str(m), p) for m, p in top_level_imports(package) if p in never} == set(), package


# runner/ in layers: a module imports only from its own layer or those below (python -m pytest -k layers)
LAYERS = [
    ("runner/__init__.py", "runner/errors.py", "runner/redact.py", "runner/hints.py"),
    ("runner/manifest.py", "runner/context.py", "runner/rundir.py", "runner/registry.py"),
    ("runner/spec/",),
    ("runner/stages/", "runner/local/", "runner/azure/"),
    ("runner/app.py",),
    ("runner/sweep/", "runner/review/"),
    ("runner/__main__.py",),
]


def layer_of(rel):
    for rank, prefixes in enumerate(LAYERS):
        if any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in prefixes):
            return rank
    return None


def runner_imports():
    """(importer, imported) module paths for every import of runner code, at module level or in a function."""
    import ast

    root = REPO_ROOT / "runner"
    for path in root.rglob("*.py"):
        rel = str(path.relative_to(REPO_ROOT))
        package = path.parent
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package
                    for _ in range(node.level - 1):
                        base = base.parent
                    base = base.joinpath(*node.module.split(".")) if node.module else base
                elif node.module and node.module.split(".")[0] == "runner":
                    base = REPO_ROOT.joinpath(*node.module.split("."))
                else:
                    continue
                names = [base / a.name for a in node.names] + [base]  # a submodule, else a name in base
            elif isinstance(node, ast.Import):
                names = [REPO_ROOT.joinpath(*a.name.split(".")) for a in node.names if a.name.split(".")[0] == "runner"]
                names = names and names + [names[-1]]
            else:
                continue
            if not names:
                continue
            found = [m for t in names[:-1] for m in (t.with_suffix(".py"), t / "__init__.py") if m.exists()]
            for module in found or [m for m in (names[-1].with_suffix(".py"), names[-1] / "__init__.py") if m.exists()]:
                yield rel, str(module.relative_to(REPO_ROOT))


def test_runner_layers_import_only_downwards():
    upward = []
    for importer, imported in runner_imports():
        low, high = layer_of(imported), layer_of(importer)
        assert low is not None and high is not None, (importer, imported, "add it to LAYERS")
        if low > high:
            upward.append(f"{importer} imports {imported}")
    assert not upward, upward


def test_runner_imports_have_no_cycle():
    import graphlib

    graph = {}
    for importer, imported in runner_imports():
        if importer != imported:
            graph.setdefault(importer, set()).add(imported)
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the cycle


def test_runner_lists_its_groups():
    """ls runner/*.py is the core loop; the rest are packages that say in their docstring what they hold."""
    assert len(list((REPO_ROOT / "runner").glob("*.py"))) <= 10
    for init in (REPO_ROOT / "runner").glob("*/__init__.py"):
        assert init.read_text().startswith('"""'), init


def test_every_stage_module_provides_what_the_registry_declares():
    """registry.StageModule for every stage on every backend; registry.DeployBackend for both deploy modules."""
    from runner.registry import DeployBackend, StageModule

    kinds = set(schema()["properties"]["compute"]["properties"]["kind"]["enum"])
    for stage in STAGES:
        for kind in kinds:
            module = stage.load(kind)
            assert isinstance(module, StageModule), (stage.name, kind)
            assert isinstance(module, DeployBackend) == (stage.name == "deploy"), (stage.name, kind)


def test_the_readme_layout_names_every_module():
    """README's Layout section names each module (as `name.py` or by its path), so a newcomer finds every file."""
    text = (REPO_ROOT / "README.md").read_text()
    layout = text[text.index("\n## Layout\n") :]
    layout = layout[: layout.index("\n## ", 1)] if "\n## " in layout[1:] else layout
    missing = []
    for package in ("runner", "trainer", "serving", "common", "flow", "hydra_plugins"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            rel = path.relative_to(REPO_ROOT)
            if path.name == "__init__.py" and path.stat().st_size == 0:
                continue
            named = (
                f"`{path.name}`" in layout
                or str(rel) in layout
                or f"`{rel.parent}/`" in layout
                and path.name == "__init__.py"
            )
            if not named:
                missing.append(str(rel))
    assert not missing, f"README's Layout section does not name: {missing}"
