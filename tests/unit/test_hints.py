"""The commands a run prints for a person (runner/hints.py): which options they keep, how they start, what the
closing block says on each backend, and the training ETA."""

import shlex
import sys

from runner import REPO_ROOT
from runner.azure import deploy as azure_deploy
from runner.hints import Again, closing_block, kept, program
from runner.local import deploy as local_deploy
from runner.manifest import Manifest
from trainer.tracking import eta


def test_kept_options_select_the_run_and_leave_out_stage_pickers_flags_and_azure_values():
    argv = [
        "-m",
        "run.name=newbie",
        "compute=local",
        "model=tiny_phi4mini",
        "hydra.run.dir=/tmp/x y",
        "stages=[data,train]",
        "plan=true",
        "force=true",
        "chat.ui=true",
        "+sweep.deploy=best",
        "azure.subscription_id=0000-1111",
        "--config-dir",
        "my conf",
        "train.learning_rate=1e-4",
    ]
    assert kept(argv) == [
        "run.name=newbie",
        "compute=local",
        "model=tiny_phi4mini",
        "hydra.run.dir=/tmp/x y",
        "--config-dir",
        "my conf",
        "train.learning_rate=1e-4",
    ]


def test_a_command_quotes_what_a_shell_would_split_or_expand():
    again = Again(("run.name=newbie", "hydra.run.dir=/tmp/x y"), "./dev run")
    command = again.command("deploy", "chat")
    assert command == "./dev run run.name=newbie 'hydra.run.dir=/tmp/x y' 'stages=[deploy,chat]'"
    assert shlex.split(command)[2:] == ["run.name=newbie", "hydra.run.dir=/tmp/x y", "stages=[deploy,chat]"]
    assert again.chat_page().endswith("'stages=[chat]' chat.ui=true")
    point = Again.for_point(["data.percent=25", "stages=[data]"])
    assert point.command("teardown").endswith(" -m data.percent=25 'stages=[teardown]'")


def test_the_program_is_dev_in_the_repository_root_and_the_venvs_python_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(REPO_ROOT / ".venv" / "bin" / "python"))
    assert program(REPO_ROOT) == "./dev run"
    assert program(tmp_path) == f"{REPO_ROOT / '.venv' / 'bin' / 'python'} -m runner"  # ./dev would move relative paths
    monkeypatch.setattr(sys, "executable", "/usr/bin/python3")
    assert program(REPO_ROOT) == "python -m runner"


def test_the_closing_block_on_azure_says_what_it_bills_and_how_to_get_the_key(tmp_path, compose_spec):
    spec = compose_spec("compute=a100", "model=phi35")
    manifest = Manifest(tmp_path)
    outputs = {"endpoint_name": "phi3-x-1234abcd", "scoring_uri": "https://e.example/score", "model": "m:3"}
    manifest.record("deploy", "done", "h", outputs)
    lines = closing_block(spec, manifest, Again(("compute=a100",), "./dev run"), azure_deploy)
    text = "\n".join(lines)
    assert "https://e.example/score" in text and "Standard_E4s_v3 x1, about $" in text
    assert (
        'az ml online-endpoint get-credentials --name phi3-x-1234abcd --resource-group "$AZURE_RESOURCE_GROUP"' in text
    )
    assert "stop it:     ./dev run compute=a100 'stages=[teardown]'" in text

    manifest.mark_stopped("deploy")
    lines = closing_block(spec, manifest, Again(("compute=a100",), "./dev run"), azure_deploy)
    assert lines[-1].strip() == "./dev run compute=a100 'stages=[deploy,chat]'" and "torn down" in lines[1]


def test_no_closing_block_where_no_endpoint_was_deployed(tmp_path, compose_spec):
    manifest = Manifest(tmp_path)
    manifest.record("data", "done", "h", {})
    assert closing_block(compose_spec(), manifest, Again(), local_deploy) == []


def test_the_eta_is_the_pace_so_far_times_the_steps_left():
    assert eta(100.0, 0, 10, 100, now=112.0) == ", about 1m48s left"  # 1.2 s a step, 90 steps left
    assert eta(0.0, 50, 60, 100, now=20.0) == ", about 1m20s left"  # resumed at step 50: its pace from there
    assert eta(0.0, 0, 1, 5000, now=2.0) == ", about 2h46m left"
    assert eta(0.0, 0, 0, 100, now=5.0) == "" and eta(0.0, 0, 100, 100, now=5.0) == ""
