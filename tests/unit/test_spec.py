"""Composition and validation of the run spec: every group combination, every cross-field rule."""

import itertools

import pytest

from runner.spec.validate import problems

COMPUTES, MODELS, DATAS = ["local", "a100", "cpu_e16s"], ["tiny", "phi3", "phi35"], ["sample", "10rows", "1pct"]
FAKE_AZURE = {
    "AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000000",
    "AZURE_RESOURCE_GROUP": "rg",
    "AZURE_ML_WORKSPACE_NAME": "ws",
    "AZURE_MANAGED_IDENTITY_RESOURCE_ID": "/subscriptions/x/uai",
    "AZURE_MANAGED_IDENTITY_CLIENT_ID": "11111111-1111-1111-1111-111111111111",
}


@pytest.mark.parametrize("compute,model,data", list(itertools.product(COMPUTES, MODELS, DATAS)))
def test_every_group_combination_composes_and_validates(compose_spec, monkeypatch, compute, model, data):
    for k, v in FAKE_AZURE.items():
        monkeypatch.setenv(k, v)
    spec = compose_spec(f"compute={compute}", f"model={model}", f"data={data}")
    assert problems(spec) == []
    assert spec["compute"]["kind"] == ("local" if compute == "local" else "azureml")
    assert spec["train"]["learning_rate"] == (5e-6 if model != "tiny" else spec["train"]["learning_rate"])


def test_model_picks_its_recipe_and_train_override_wins(compose_spec):
    assert compose_spec("model=phi3")["train"]["max_length"] == 2048
    assert compose_spec("model=phi35", "train=quick")["train"]["max_length"] == 256


def test_split_strings_follow_the_slice(compose_spec):
    from runner.stages.data import split_string

    assert split_string(compose_spec("data=10rows")["data"]) == "train_sft[:10]"
    assert split_string(compose_spec("data=1pct", "data.percent=2")["data"]) == "train_sft[:2%]"


def _msgs(spec):
    return "\n".join(problems(spec))


def test_bf16_on_a_cpu_compute_is_an_error(compose_spec):
    msg = _msgs(compose_spec("compute.precision=bf16", "compute.device=cpu"))
    assert "compute.precision" in msg and "needs a GPU" in msg


def test_bf16_on_cpu_cluster_is_an_error(compose_spec):
    assert "needs a GPU" in _msgs(compose_spec("compute=cpu_e16s", "compute.precision=bf16", "plan=true"))


def test_rows_and_percent_both_set(compose_spec):
    assert "exactly one of data.rows or data.percent" in _msgs(compose_spec("data=10rows", "data.percent=5"))


def test_neither_rows_nor_percent(compose_spec):
    assert "neither is set" in _msgs(compose_spec("data=10rows", "data.rows=null"))


@pytest.mark.parametrize("size", [0, 1, 1.5, -0.2])
def test_test_size_outside_zero_one(compose_spec, size):
    assert "data.test_size" in _msgs(compose_spec(f"data.test_size={size}"))


def test_split_that_leaves_an_empty_side(compose_spec):
    msg = _msgs(compose_spec("data=10rows", "data.rows=1"))
    assert "leaves 0 train and 1 test rows" in msg


def test_azure_without_workspace_variables_names_them_all(compose_spec):
    msg = _msgs(compose_spec("compute=a100"))
    for var in FAKE_AZURE:
        assert var in msg


def test_azure_plan_needs_no_workspace(compose_spec):
    assert problems(compose_spec("compute=a100", "plan=true")) == []


def test_misspelt_key_is_caught_with_a_suggestion(compose_spec):
    msg = _msgs(compose_spec("+data.percnet=3"))
    assert "data.percnet: unknown key" in msg and "did you mean 'percent'" in msg


def test_misspelt_top_level_and_nested_keys(compose_spec):
    msg = _msgs(compose_spec("+train.lerning_rate=1", "+trian.x=1"))
    assert "did you mean 'learning_rate'" in msg and "trian: unknown key" in msg


def test_every_problem_is_reported_at_once(compose_spec):
    found = problems(
        compose_spec(
            "+data.percnet=3",
            "data.test_size=2",
            "compute.precision=bf16",
            "compute.device=cpu",
            "train.lr_scheduler_type=cosin",
        )
    )
    text = "\n".join(found)
    assert len(found) >= 4
    for part in ("percnet", "test_size", "compute.precision", "train.lr_scheduler_type"):
        assert part in text


def test_wrong_types_and_enums(compose_spec):
    msg = _msgs(compose_spec("train.num_train_epochs=many", "data.on_bad_row=ignore"))
    assert "train.num_train_epochs" in msg and "data.on_bad_row: 'ignore' is not one of 'error', 'skip'" in msg


def test_heads_must_divide_width(compose_spec):
    assert "does not divide hidden_size" in _msgs(compose_spec("model.tiny.num_attention_heads=5"))


def test_every_schema_field_has_a_description():
    from runner.spec.validate import schema

    def walk(node, path):
        if isinstance(node, dict) and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"
            for key, sub in node["properties"].items():
                assert sub.get("description"), f"{path}.{key} has no description"
                walk(sub, f"{path}.{key}")

    walk(schema(), "spec")


def test_redacted_spec_hides_environment_values(compose_spec, monkeypatch):
    from hydra import compose, initialize_config_dir

    from runner import CONF_DIR
    from runner.redact import redacted
    from runner.spec import env_sourced_paths, to_spec

    for k, v in FAKE_AZURE.items():
        monkeypatch.setenv(k, v)
    compose_spec()  # clears Hydra's global state
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["compute=a100"])
    spec = to_spec(cfg)
    safe = redacted(spec, env_sourced_paths(cfg))
    assert spec["azure"]["subscription_id"] == FAKE_AZURE["AZURE_SUBSCRIPTION_ID"]
    assert safe["azure"]["subscription_id"] == "<from $AZURE_SUBSCRIPTION_ID>"
    assert FAKE_AZURE["AZURE_SUBSCRIPTION_ID"] not in str(safe)


def test_a_chosen_endpoint_name_must_be_a_valid_azure_one(compose_spec):
    assert problems(compose_spec("run.name=my_long_experiment_name_v2", "compute=a100", "plan=true")) == []  # derived
    assert problems(compose_spec("deploy.endpoint_name=My_Chat")) == []  # only Azure computes care
    msg = _msgs(compose_spec("compute=a100", "plan=true", "deploy.endpoint_name=my_chat_endpoint"))
    assert "deploy.endpoint_name" in msg and "not a valid Azure endpoint name" in msg and "null derives" in msg


def test_chat_cannot_ask_for_more_tokens_than_the_endpoint_allows(compose_spec):
    assert "deploy.max_new_tokens_limit=256" in _msgs(compose_spec("chat.max_new_tokens=1000"))


def test_no_questions_is_an_error(compose_spec):
    assert "chat.questions" in _msgs(compose_spec("chat.questions=[]"))


def test_a_value_the_schema_rejects_gets_one_message_not_rule_noise(compose_spec):
    found = problems(compose_spec("data.rows=1.5"))
    assert len(found) == 1 and found[0].startswith("data.rows: 1.5 is invalid")


def test_a_hub_split_takes_whole_percents(compose_spec):
    assert "data.percent=1" in _msgs(compose_spec("data=1pct", "data.percent=0.5"))
    assert problems(compose_spec("data.percent=50")) == []  # a local file takes any fraction


def test_azure_values_given_on_the_command_line_are_redacted_too(tmp_path):
    from ..support.helpers import runner_cli

    r = runner_cli("compute=a100", "plan=true", "azure.subscription_id=1234-not-for-files", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    written = "".join(p.read_text() for p in (tmp_path / "outputs").rglob("*") if p.is_file())
    assert "1234-not-for-files" not in written + r.stdout


def test_each_run_directory_gets_its_own_chat_connection(compose_spec, tmp_path):
    from runner.stages.chat import connection_name

    spec = compose_spec("run.name=my-run")
    a, b = connection_name(spec, tmp_path / "a"), connection_name(spec, tmp_path / "b")
    assert a != b and a.startswith("phi3_my_run_") and a == connection_name(spec, tmp_path / "a")
