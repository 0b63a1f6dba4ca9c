"""Will it fit? The GPUs a run trains on, whether FSDP2 shards it over them, and the memory estimate
(trainer/memory.py) against their memory: the rules that refuse a run (listed in rules.RULES), the warning for one
close to the limit, and the plan's processes and memory lines."""


def _gpu(spec):
    """(where, GiB per GPU, GPUs, bf16) of the GPUs a run trains on; None on a CPU or a size not listed."""
    c = spec["compute"]
    if c["kind"] == "azureml":
        from .hardware import gpu

        sku = gpu(c["instance_type"])
        return sku and (f" on {c['instance_type']} ({sku.gpus}x {sku.gpu})", sku.gpu_gib, sku.gpus, sku.bf16)
    if c["device"] != "cpu":
        from .hardware import visible

        g = visible()
        return g and (f" of this machine's {g.name}", g.gib, g.count, True)
    return None


def _sharding(spec) -> tuple[int, bool, str]:
    """(processes, sharded, why): memory.sharding with the run's processes and its GPU's memory, as the trainer
    decides it when it starts."""
    from trainer import memory

    from .hardware import processes

    n, gpu = processes(spec["compute"]), _gpu(spec)
    return (n, *memory.sharding(spec, n, gpu and gpu[1]))


def _memory(spec):
    """(estimate, limit in bytes, where) for a run on a GPU whose memory is known; None otherwise. Sharded (FSDP2),
    the estimate is one process's share."""
    from trainer import memory

    gpu = _gpu(spec)
    if not gpu:
        return None
    n, sharded, _ = _sharding(spec)
    est = memory.for_spec(spec, shards=n if sharded else 1)
    return est and (est, gpu[1] * memory.GIB, gpu[0])


def _per(spec) -> str:
    n, sharded, _ = _sharding(spec)
    return f" with FSDP2 over {n} processes" if sharded else ""


def sharding_line(spec) -> str:
    """The plan's line: how many processes train, and whether FSDP2 shards the model over them, and why."""
    from .hardware import processes_per_instance

    c, (n, _, why) = spec["compute"], _sharding(spec)
    return f"processes: {n // processes_per_instance(c)} node(s) x {processes_per_instance(c)} process(es) = {n}; {why}"


def memory_line(spec) -> str:
    """The plan's line: the estimated peak training memory of one GPU against what it has."""
    from trainer import memory

    m = _memory(spec)
    if m:
        est, limit, where = m
        share = est.total / limit
        verdict = "does not fit" if share > 1 else "fits, within 10 % of the limit" if share > 0.9 else "fits"
        return f"memory: {est.line(limit, where)} per GPU{_per(spec)}: {verdict}"
    est = memory.for_spec(spec, "cpu" if spec["compute"]["device"] == "cpu" else "cuda")
    if est is None:
        return f"memory: not estimated ({spec['model']['id']}: its shape is not known here)"
    return f"memory: {est.line()} per process (no GPU memory to compare with)"


def attention_line(spec) -> str:
    """The plan's line: which attention kernel trains (and serves) the model."""
    attn = spec["model"]["attn_implementation"]
    why = {
        "eager": "keeps every attention score for backward: the most activation memory",
        "sdpa": "PyTorch's scaled_dot_product_attention, the sliding window and packed rows masked as eager masks them",
        "flash_attention_2": "the flash-attn kernels (CUDA only)",
    }[attn]
    return f"attention: {attn} (model.attn_implementation; {why})"


def fits_gpu_memory(spec):
    m = _memory(spec)
    if not m or m[0].total <= m[1]:
        return
    from trainer import memory

    from .hardware import processes

    est, limit, where = m
    fix = memory.fitting(spec, limit, processes=processes(spec["compute"]))
    hint = (
        f"e.g. {' '.join(fix[0])} (about {fix[1].total / memory.GIB:.0f} GiB)"
        if fix
        else "nothing here fits: a GPU with more memory, or a smaller train.max_length"
    )
    yield "train", f"{est.line(limit, where)} per GPU{_per(spec)}: it cannot fit; {hint}"


def gpu_computes_in_bf16(spec):
    gpu, c = _gpu(spec), spec["compute"]
    if gpu and not gpu[3] and c["precision"] in ("bf16", "bf16-mixed"):
        yield (
            "compute.precision",
            (
                f"{c['precision']!r} needs bfloat16 arithmetic, which the GPU{gpu[0]} lacks: "
                "use compute.precision=fp16 or compute.precision=fp32"
            ),
        )


def processes_per_gpu(spec):
    from .hardware import processes_per_instance

    gpu, c = _gpu(spec), spec["compute"]
    n = processes_per_instance(c)
    if gpu and n > gpu[2]:
        machine = c["instance_type"] if c["kind"] == "azureml" else "this machine"
        yield (
            "compute.processes_per_instance",
            (
                f"{n} processes but {machine} has {gpu[2]} GPU(s): e.g. "
                f"compute.processes_per_instance={gpu[2]} (or auto)"
            ),
        )


def fsdp_needs_processes(spec):
    from .hardware import processes

    if spec["train"].get("fsdp") is True and processes(spec["compute"]) < 2:
        yield (
            "train.fsdp",
            (
                "true shards the model over several processes, but this run has one: e.g. "
                "compute.processes_per_instance=2 (or train.fsdp=auto)"
            ),
        )


def warnings(spec) -> list[str]:
    """What is allowed but likely to go wrong: a run within 10 % of its GPU's memory."""
    m = _memory(spec)
    if m and 0.9 * m[1] < m[0].total <= m[1]:
        return [
            f"train: {m[0].line(m[1], m[2])} per GPU{_per(spec)}: within 10 % of the limit, and the allocator needs some "
            "room of its own; an out-of-memory error is likely (a smaller batch or checkpointing leaves room)"
        ]
    return []
