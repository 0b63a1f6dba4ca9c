"""python -m runner as a user runs it: plan output, exit statuses, nothing written on bad input."""

import json
import re

import yaml

from runner import CONF_DIR

from ..support.helpers import HEAVY, imported_by, runner_cli, runner_in_process


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


def test_plan_prints_spec_and_stages_and_writes_only_spec_and_plan(tmp_path):
    r = runner_in_process("compute=local", "plan=true", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "model:" in r.stdout and "stages:" in r.stdout
    for stage in ("data", "train", "eval", "register", "deploy", "chat"):
        assert f"  {stage}: would run (never ran here)" in r.stdout or f"  {stage}: runs every time" in r.stdout
    run_dir = tmp_path / "outputs/default/local_tiny_sample"
    assert files_under(run_dir) == ["plan.txt", "spec.yaml"]
    spec = yaml.safe_load((run_dir / "spec.yaml").read_text())
    assert spec["data"]["percent"] == 100 and spec["plan"] is True


def test_bad_override_value_exits_2_and_leaves_nothing(tmp_path):
    r = runner_cli("+data.percnet=3", "data.test_size=3", cwd=tmp_path)
    assert r.returncode == 2
    assert "data.percnet: unknown key" in r.stderr and "did you mean 'percent'" in r.stderr
    assert "data.test_size" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "outputs").exists()


def test_unknown_key_without_plus_and_unknown_option_exit_2(tmp_path):
    r = runner_cli("data.percnet=3", cwd=tmp_path)
    assert r.returncode == 2 and "percnet" in r.stderr and "Traceback" not in r.stderr
    r = runner_cli("compute=a10", cwd=tmp_path)
    assert r.returncode == 2 and "a10" in r.stderr
    assert not (tmp_path / "outputs").exists()


def test_azure_compute_without_variables_exits_2_naming_them(tmp_path):
    r = runner_cli("compute=cpu_e16s", "model=phi3", "data=10rows", cwd=tmp_path)
    assert r.returncode == 2
    assert "AZURE_SUBSCRIPTION_ID" in r.stderr and "AZURE_MANAGED_IDENTITY_CLIENT_ID" in r.stderr
    assert not (tmp_path / "outputs").exists()


def test_hydra_cfg_job_print(tmp_path):
    r = runner_cli("--cfg", "job", "compute=cpu_e16s", "model=phi3", "data=10rows", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert cfg["compute"]["instance_type"] == "Standard_E16s_v3" and cfg["data"]["rows"] == 10
    assert not (tmp_path / "outputs").exists()


def test_multirun_sweep_gives_each_point_its_own_run_directory(tmp_path):
    r = runner_in_process("-m", "data=1pct", "data.percent=1,2,5", "plan=true", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    base = tmp_path / "outputs/default/local_tiny_1pct"
    specs = sorted(base.glob("*/spec.yaml"))
    assert [p.parent.name for p in specs] == ["data.percent=1", "data.percent=2", "data.percent=5"]
    assert [yaml.safe_load(p.read_text())["data"]["percent"] for p in specs] == [1, 2, 5]


def test_data_stage_runs_then_is_skipped_then_forced(tmp_path):
    r = runner_in_process("stages=[data]", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = tmp_path / "outputs/default/local_tiny_sample"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["data"]["status"] == "done"
    assert set(manifest["stages"]) == {"data"}
    r = runner_in_process("stages=[data]", cwd=tmp_path)
    assert "[data] skipped: inputs unchanged" in r.stdout
    r = runner_in_process("stages=[data]", "force=true", cwd=tmp_path)
    assert "[data] done" in r.stdout
    r = runner_in_process("stages=[data]", "data.seed=1", cwd=tmp_path)  # changed input: runs again
    assert "[data] done" in r.stdout
    r = runner_in_process("stages=[data]", "data.seed=1", "plan=true", cwd=tmp_path)
    assert "data: would be skipped (inputs unchanged)" in r.stdout


def test_hydra_run_dir_override(tmp_path):
    r = runner_in_process("stages=[data]", "hydra.run.dir=elsewhere", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "elsewhere/data/train.jsonl").is_file()


def test_compose_validate_and_plan_import_no_heavy_library(tmp_path):
    code = (
        "import sys\n"
        "sys.argv = ['runner', 'compute=a100', 'model=phi35', 'data=1pct', 'plan=true']\n"
        "from runner.__main__ import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
    )
    assert imported_by(code, cwd=tmp_path) & HEAVY == set()


def test_a_bad_sweep_point_refuses_the_sweep_before_any_point_runs(tmp_path):
    r = runner_in_process("-m", "data.test_size=0.2,5,0.3", "plan=true", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "the sweep is invalid (3 points; nothing ran)" in r.stderr
    assert "data.test_size: 5 is outside (0, 1)" in r.stderr and "[data.test_size=5]" in r.stderr
    assert not (tmp_path / "outputs").exists()  # not even Hydra's multirun.yaml
    r = runner_in_process("-m", "compute=a10,local", "plan=true", cwd=tmp_path)  # an option that does not exist
    assert r.returncode == 2 and "the sweep is invalid (2 points; nothing ran)" in r.stderr
    assert (
        "Could not find 'compute/a10' Available options in 'compute': a100" in r.stderr and "[compute=a10]" in r.stderr
    )
    assert not (tmp_path / "outputs").exists()


def test_a_sweep_that_would_deploy_every_point_over_one_endpoint_is_refused(tmp_path):
    r = runner_in_process("-m", "data.percent=50,100", "stages=[data,train,register,deploy]", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "2 of the 2 points would deploy, each over the same endpoint" in r.stderr
    assert "-m runner -m data.percent=50 'stages=[deploy,chat]'" in r.stderr  # the command that deploys once
    assert not (tmp_path / "outputs").exists()


def test_points_that_would_share_a_run_directory_are_refused(tmp_path):
    # azure.* values never name folders (a subscription id stays out of paths): these two points are one folder
    r = runner_in_process("-m", "azure.resource_group=rg-a,rg-b", "stages=[data]", cwd=tmp_path)
    assert r.returncode == 2 and "would share one run directory" in r.stderr and "rg-a" not in r.stderr
    # the train recipe names its folder: two recipes are two points
    r = runner_in_process(
        "-m", "train=quick,seed_recipe", "train.max_length=512", "stages=[data]", "plan=true", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert "local_tiny_sample/train.max_length=512,train=quick/spec.yaml" in r.stdout
    assert "local_tiny_sample/train.max_length=512,train=seed_recipe/spec.yaml" in r.stdout


def test_a_corrupt_manifest_is_a_clear_error(tmp_path):
    run_dir = tmp_path / "outputs/default/local_tiny_sample"
    run_dir.mkdir(parents=True)
    (run_dir / "manifest.json").write_text("{bad")
    r = runner_cli("stages=[data]", cwd=tmp_path)
    assert r.returncode == 2 and "manifest.json is not valid JSON" in r.stderr and "Traceback" not in r.stderr


def test_a_refused_run_removes_only_the_folders_it_created(tmp_path):
    (tmp_path / "mine").mkdir()  # an empty folder of the user's, there before the command
    r = runner_in_process("hydra.run.dir=mine/a/b", "data.test_size=5", cwd=tmp_path)
    assert r.returncode == 2 and "data.test_size" in r.stderr
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())
    r = runner_in_process("hydra.run.dir=mine", "data.test_size=5", cwd=tmp_path)
    assert r.returncode == 2 and (tmp_path / "mine").is_dir()
    r = runner_in_process("data.test_size=5", cwd=tmp_path)
    assert r.returncode == 2 and not (tmp_path / "outputs").exists()  # all of outputs/ was this command's
    # a run name that climbs out of run.output_root: Hydra made folders on both sides, all taken back
    r = runner_in_process("run.output_root=out/here", "run.name=../../../away/z", "data.test_size=5", cwd=tmp_path)
    assert r.returncode == 2 and "run.name" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_bases_are_not_options(tmp_path):
    """conf/_base/ holds what options extend: neither Hydra's option list nor --help offers one."""
    for arg in ("compute=azureml", "compute=_azureml", "model=_phi3", "data=split"):
        r = runner_cli(arg, "plan=true", cwd=tmp_path)
        assert r.returncode == 2 and "Available options in" in r.stderr and "Traceback" not in r.stderr, r.stderr
        listed = r.stderr.split("Available options in", 1)[1].split("Config search path")[0]
        assert "azureml" not in listed and "split" not in listed and "_phi3" not in listed, listed
    assert not (tmp_path / "outputs").exists()


def test_help_names_the_program_and_what_each_group_chooses(tmp_path):
    r = runner_cli("--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "__main__" not in r.stdout and "python -m runner [group=option" in r.stdout
    groups = {
        line.split("=")[0].strip(): line.split("=", 1)[1]
        for line in r.stdout.splitlines()
        if re.match(r"  (compute|model|data|train)=", line)
    }
    for group, listed in groups.items():  # every option file, the default first, no base
        names = listed.replace(" (default)", "").split(", ")
        assert set(names) == {p.stem for p in (CONF_DIR / group).glob("*.yaml")}, group
    assert groups["compute"].startswith("local (default), ") and groups["train"].startswith("quick (default), ")
    assert "_base" not in r.stdout.split("== Config ==")[0].replace("conf/_base/", "")
    assert "where it trains" in r.stdout and "the training recipe" in r.stdout
    r = runner_cli("compute=a100", "--help", cwd=tmp_path)  # the help of that run: its composed config
    assert "instance_type: Standard_NC24ads_A100_v4" in r.stdout
    assert not (tmp_path / "outputs").exists()
