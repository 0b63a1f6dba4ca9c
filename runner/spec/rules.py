"""Cross-field rules of the run spec: each one a small function returning problems (path, message)."""

import math
import re

from . import azure_env
from .memory_fit import fits_gpu_memory, fsdp_needs_processes, gpu_computes_in_bf16, processes_per_gpu
from .model_rules import chat_template_is_a_file, max_length_fits_model


def bf16_needs_a_gpu(spec):
    c = spec["compute"]
    if c["precision"] in ("bf16", "bf16-mixed", "fp16") and c["device"] == "cpu":
        yield (
            "compute.precision",
            (
                f"{c['precision']!r} needs a GPU but compute.device is 'cpu'; "
                "use compute.precision=fp32 or a GPU compute such as compute=a100"
            ),
        )


def one_slice(spec):
    d = spec["data"]
    if (d["rows"] is None) == (d["percent"] is None):
        got = "both are set" if d["rows"] is not None else "neither is set"
        yield (
            "data.rows",
            (
                f"set exactly one of data.rows or data.percent ({got}: rows={d['rows']}, "
                f"percent={d['percent']}); e.g. data.rows=null data.percent=2"
            ),
        )


def test_size_range(spec):
    t = spec["data"]["test_size"]
    if not 0 < t < 1:
        yield "data.test_size", f"{t} is outside (0, 1); use a fraction, e.g. data.test_size=0.2"


def split_not_empty(spec):
    d = spec["data"]
    n, t = d["rows"], d["test_size"]
    if n is None or not 0 < t < 1 or d.get("eval") == "fixed":  # fixed: held out of the whole source, not of n
        return
    n_test = math.ceil(n * t)  # datasets rounds the test share up
    if n_test < 1 or n - n_test < 1:
        yield (
            "data.rows",
            (
                f"{n} rows with test_size={t} leaves {n - n_test} train and {n_test} test rows; "
                "both need at least one: raise data.rows or change data.test_size"
            ),
        )


def fixed_slice_not_empty(spec):
    """data.eval=fixed on a file: the held-out rows come out of the whole file first, the slice from the rest. Counted
    from the file's lines here, so a sweep point that would train on nothing is refused before any point runs."""
    d = spec["data"]
    if d.get("eval") != "fixed" or d["source"] != "file" or not d["path"] or not 0 < d["test_size"] < 1:
        return
    from . import resolve_path

    path = resolve_path(d["path"])
    if not path.is_file():
        return  # the data stage says so
    with open(path, "rb") as f:
        lines = sum(1 for line in f if line.strip())
    held = d["eval_rows"] or math.ceil(lines * d["test_size"])
    if held >= lines:
        yield (
            "data.eval_rows",
            (
                f"{path.name} has {lines} rows; holding {held} out for evaluation leaves none to "
                "train on: lower data.eval_rows"
            ),
        )
        return
    pool = lines - held
    take = d["rows"] if d["rows"] is not None else int(round(pool * (d["percent"] or 0) / 100))
    if d["rows"] is None and take < 1:
        yield (
            "data.percent",
            (
                f"{d['percent']}% of the {pool} rows of {path.name} not held out for evaluation is "
                f"{take} rows: raise data.percent (at least {math.ceil(50 / pool)}), or use data.rows"
            ),
        )


def source_fields(spec):
    d = spec["data"]
    if d["source"] == "file" and not d["path"]:
        yield "data.path", "data.source=file needs data.path (a JSONL file), e.g. data.path=chats.jsonl"
    if d["source"] == "hub" and d["percent"] is not None and d["percent"] != int(d["percent"]):
        yield (
            "data.percent",
            (
                f"{d['percent']} is not a whole percent, which a hub split needs (train_sft[:N%]); "
                f"e.g. data.percent={max(1, round(d['percent']))}, or data.rows for a finer slice"
            ),
        )
    if d["source"] == "file" and d.get("eval_split"):
        yield (
            "data.eval_split",
            (
                "a JSONL file has no splits: data.eval_split=null holds a seeded share out of the "
                "whole file instead (data.eval_rows=N sets its size)"
            ),
        )
    if d["source"] == "hub" and d.get("eval") == "fixed" and d.get("eval_split") and d["eval_split"] == d["split"]:
        yield (
            "data.eval_split",
            (
                f"evaluating on {d['eval_split']}, the split the slice trains on, would score rows "
                "the model may have trained on: name another split (ultrachat_200k: test_sft)"
            ),
        )
    if d["source"] == "hub" and not d["dataset"]:
        yield "data.dataset", "data.source=hub needs data.dataset, e.g. data.dataset=HuggingFaceH4/ultrachat_200k"
    m = spec["model"]
    if m["source"] == "hub" and not m["id"]:
        yield (
            "model.id",
            (
                "model.source=hub needs model.id (a hub id or a local folder), "
                "e.g. model.id=microsoft/Phi-3-mini-4k-instruct"
            ),
        )
    if m["source"] == "tiny" and not m["tiny"]:
        yield "model.tiny", "model.source=tiny needs the model.tiny shape settings: start from model=tiny"
    if m["source"] == "tiny" and m["tiny"]:
        h, heads = m["tiny"]["hidden_size"], m["tiny"]["num_attention_heads"]
        if h % heads:
            yield (
                "model.tiny.num_attention_heads",
                (f"{heads} does not divide hidden_size {h}, e.g. model.tiny.num_attention_heads={_divisor(h, heads)}"),
            )
        kv = m["tiny"].get("num_key_value_heads")
        if kv and heads % kv:
            yield (
                "model.tiny.num_key_value_heads",
                f"{kv} does not divide num_attention_heads {heads}, e.g. model.tiny.num_key_value_heads="
                f"{_divisor(heads, kv)}",
            )


def _divisor(n: int, near: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - near))


def azure_workspace_set(spec):
    if spec["compute"]["kind"] != "azureml" or spec["plan"]:
        return  # plan mode makes no cloud call, so it needs no workspace
    missing = [env for key, env in azure_env().items() if not spec["azure"].get(key)]
    if missing:
        yield (
            "azure",
            (
                "an Azure compute needs these environment variables: "
                + ", ".join(missing)
                + " (export them in your shell; see README 'Azure ML')"
            ),
        )


def azure_endpoint_name(spec):
    name = spec["deploy"]["endpoint_name"]  # null: derived, valid by construction
    if (
        name
        and spec["compute"]["kind"] == "azureml"
        and not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]", name)
    ):
        yield (
            "deploy.endpoint_name",
            (
                f"{name!r} is not a valid Azure endpoint name (3-32 letters, digits and '-', "
                "starting with a letter, ending with a letter or digit); fix it, or deploy.endpoint_name=null derives one"
            ),
        )


def chat_within_endpoint_limit(spec):
    asked, limit = spec["chat"]["max_new_tokens"], spec["deploy"]["max_new_tokens_limit"]
    if asked > limit:
        yield (
            "chat.max_new_tokens",
            (
                f"{asked} is over the endpoint's deploy.max_new_tokens_limit={limit}; "
                f"e.g. chat.max_new_tokens={limit}, or raise deploy.max_new_tokens_limit"
            ),
        )


def cluster_size(spec):
    c = spec["compute"]
    serverless = c.get("cluster_name", "") is None  # no cluster: the subscription's quota bounds the nodes
    if c["kind"] == "azureml" and not serverless and c.get("instance_count", 1) > c.get("max_instances", 1):
        yield (
            "compute.instance_count",
            (
                f"{c['instance_count']} nodes but the cluster grows to at most "
                f"compute.max_instances={c['max_instances']}: e.g. "
                f"compute.max_instances={c['instance_count']}"
            ),
        )


def _deploys_on_azure(spec) -> bool:
    return spec["compute"]["kind"] == "azureml" and "deploy" in spec["stages"]


def deployment_holds_the_model(spec):
    """An Azure deployment whose VM cannot hold the model's weights and KV cache (runner/spec/estimates.py)."""
    from .estimates import serving_lines

    refusal = _deploys_on_azure(spec) and serving_lines(spec)[1]
    if refusal:
        yield "deploy.instance_type", refusal


def warnings(spec) -> list[str]:
    """What is allowed but likely to go wrong: a run near its GPU's memory, an Azure deployment slower than people
    read."""
    from . import memory_fit
    from .estimates import serving_lines

    slow = _deploys_on_azure(spec) and serving_lines(spec)[2]
    return memory_fit.warnings(spec) + ([f"deploy: {slow}"] if slow else [])


RULES = [
    bf16_needs_a_gpu,
    one_slice,
    test_size_range,
    split_not_empty,
    fixed_slice_not_empty,
    source_fields,
    azure_workspace_set,
    azure_endpoint_name,
    chat_within_endpoint_limit,
    cluster_size,
    max_length_fits_model,
    fits_gpu_memory,
    chat_template_is_a_file,
    gpu_computes_in_bf16,
    processes_per_gpu,
    fsdp_needs_processes,
    deployment_holds_the_model,
]
