"""Before paying: the Azure job's expected time and cost, the deployment's memory fit and answer speed, worked by
hand on small cases; the refusal and the warning as a user meets them, and the override they name."""

import pytest

from runner.spec import estimates, hardware
from trainer import memory

from ..support.helpers import runner_cli

PLAN = ["compute=a100", "model=phi35", "data=1pct", "plan=true"]


def test_the_jobs_expected_time_and_cost_by_hand(compose_spec):
    """1,000 chats in 4,048,000 bytes of JSONL: 1,012 tokens each; 3 epochs at 8N (checkpointing) plus attention per
    token, 4 evaluations of the 250 held-out chats at 2N, on one A100 at 35 % of 312 TFLOPS."""
    spec = compose_spec("compute=a100", "model=phi35", "data=1pct", "plan=true")
    data = {"train_rows": 1000, "train_bytes": 4_048_000}
    n, layers, width, seq = memory.PHI3_MINI.parameters(), 32, 3072, spec["train"]["max_length"]
    per_token = 8 * n + 6 * layers * width * seq
    tokens = 4_048_000 / 4
    rate = 312e12 * 0.35
    seconds = tokens * 3 * per_token / rate + 4 * (tokens * 0.2 / 0.8) * 2 * n / rate
    e = estimates.job(spec, data)
    assert e["tokens"] == tokens == 1_012_000 and e["epochs"] == 3
    assert e["hours"] == pytest.approx(seconds / 3600 + 0.25) and e["usd"] == pytest.approx(e["hours"] * 3.67)
    line = estimates.job_line(spec, data)
    assert line.startswith(f"expected: about {e['hours']:.1f} h, about ${e['usd']:.2f} (1,012,000 tokens x 3 epoch")
    assert "assuming 35% MFU (an assumption until bench/train_recipes.py measures it on a GPU)" in line
    # before the data stage: the slice's rows (1 % of 207,865, 80 % of them trained) x the assumed chat length
    e = estimates.job(spec, {})
    assert e["tokens"] == (2079 - 416) * 1400 and "an assumed 1400 tokens each" in e["counted"]
    # LoRA: no gradients of the frozen weights, 4N instead of 6N
    spec["train"]["lora"]["enabled"] = True
    assert estimates.flops_per_token(spec, memory.PHI3_MINI) == per_token - 2 * n


def test_the_plan_prints_the_expected_job_beside_its_bound_and_a_sweep_sums_its_points(tmp_path):
    r = runner_cli(*PLAN, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    bound = next(x for x in r.stdout.splitlines() if "at most 6 h (compute.max_hours" in x)
    expected = next(x for x in r.stdout.splitlines() if "expected: about" in x)
    hours = float(expected.split("about ")[1].split(" h")[0])
    assert "about $22.02" in bound and 0.25 < hours < 6 and "MFU" in expected
    r = runner_cli("-m", *PLAN, "data.percent=1,2", cwd=tmp_path)
    points = [
        float(x.split("about ")[1].split(" h")[0])
        for x in r.stdout.splitlines()
        if "expected: about" in x and " h," in x
    ]
    total = next(x for x in r.stdout.splitlines() if "job-hours" in x)
    assert len(points) == 2 and float(total.split("about ")[1].split(" job-hours")[0]) == pytest.approx(
        sum(points), abs=0.11
    )


def test_the_deployments_memory_and_decode_bound_by_hand(compose_spec):
    """Phi-3.5-mini served in float32 on Standard_E4s_v3: 4 bytes a weight; 2 x 32 layers x 3,072 x 4 bytes of KV
    per token; 20 GB/s over the weights and half a context of KV per token."""
    spec = compose_spec(*PLAN)
    n = memory.PHI3_MINI.parameters()
    context = spec["train"]["max_length"] + spec["deploy"]["max_new_tokens_limit"]
    kv_token = 2 * 32 * 3072 * 4
    s = estimates.serving(spec)
    assert s["dtype"] == "fp32" and s["weights_gib"] == pytest.approx(n * 4 / memory.GIB)
    assert s["kv_kib_per_token"] == 768 and s["kv_gib"] == pytest.approx(kv_token * context * 3 / memory.GIB)
    assert s["loading_gib"] == pytest.approx(n * 6 / memory.GIB)  # the saved bf16 and the float32 copy at once
    assert s["need_gib"] == pytest.approx(n * 6 / memory.GIB + 2) and s["fits"] and s["memory_gib"] == 32
    assert s["tokens_per_s"] == pytest.approx(20e9 / (n * 4 + kv_token * context / 2))
    # Phi-4-mini: 8 KV heads of 128, a third of Phi-3-mini's KV cache per token
    assert estimates.serving(compose_spec("compute=a100", "model=phi4mini", "plan=true"))["kv_kib_per_token"] == 256


def test_the_default_deployment_warns_of_its_speed_and_the_gpu_it_names_plans_without_a_warning(tmp_path):
    r = runner_cli(*PLAN, cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr
    warning = next(x for x in r.stderr.splitlines() if x.startswith("warning: deploy:"))
    assert "Standard_E4s_v3 answers at most about 1." in warning and "slower than people read" in warning
    override = warning.split("a GPU deployment: ")[1].split()[0]
    assert override == "deploy.instance_type=Standard_NC4as_T4_v3"
    assert "answer speed: at most about 1." in r.stdout and "serving: fp32 weights 14.2 GiB" in r.stdout
    r = runner_cli(*PLAN, override, cwd=tmp_path)  # the named override, typed after the same command
    assert r.returncode == 0 and "warning: deploy:" not in r.stderr, r.stderr
    assert "serving: fp16 weights 7.1 GiB" in r.stdout and "on Standard_NC4as_T4_v3 (1x T4): fits" in r.stdout


def test_a_deployment_that_cannot_hold_the_model_is_refused_with_one_that_can(tmp_path):
    too_many = "deploy.max_concurrent_requests_per_instance=64"
    r = runner_cli(*PLAN, "deploy.instance_type=Standard_NC4as_T4_v3", too_many, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and not (tmp_path / "outputs").exists()
    assert "deploy.instance_type: the deployment needs about" in r.stderr and "it cannot hold the model" in r.stderr
    fix = r.stderr.split("it cannot hold the model; e.g. ")[1].split()[0]
    assert fix.startswith("deploy.instance_type=") and fix != "deploy.instance_type=Standard_NC4as_T4_v3"
    r = runner_cli(*PLAN, "deploy.instance_type=Standard_NC4as_T4_v3", too_many, fix, cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_a_gpu_deployment_plans_files_the_sdk_loads_with_the_gpu_image_and_pytorchs_cuda_build(tmp_path):
    from azure.ai.ml import load_environment, load_online_deployment

    r = runner_cli(*PLAN, "deploy.instance_type=Standard_NC4as_T4_v3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    az = tmp_path / "outputs" / "default" / "a100_phi35_1pct" / "azure"
    deployment = load_online_deployment(az / "deployment.yml")
    assert deployment.instance_type == "Standard_NC4as_T4_v3"
    assert deployment.environment.image.endswith("-gpu-inference:latest")
    conda = (az / "conda-inference.yml").read_text()
    assert "+cu" in conda.split("torch==")[1].split()[0] and "download.pytorch.org/whl/cu" in conda
    assert load_environment(az / "environment.yml")  # the training environment is untouched by it
    sku = hardware.SKUS["Standard_NC4as_T4_v3"]
    assert (sku.gpus, sku.bf16, sku.mem_gbs) == (1, False, 320)  # fp16 there: T4s have no bf16 arithmetic
