"""The machines a spec can name: the Azure VM sizes people train and serve on (hourly list price, GPUs) and the
GPUs this machine shows, for plan mode's cost and memory lines and the checks that use them.

Approximate pay-as-you-go Linux list prices in USD per hour (East US 2, 2025); your region, discounts and
reservations change them. https://azure.microsoft.com/pricing/details/machine-learning/ has the real ones.
GPU memory is each GPU's, in GiB as the GPU reports it; bf16 says whether the GPU computes in bfloat16
(V100 and T4 do not: they train in fp16 or fp32).
"""

import shutil
import subprocess
from functools import lru_cache
from typing import NamedTuple

AS_OF = "East US 2 list prices, 2025"


class Sku(NamedTuple):
    usd_per_hour: float
    gpus: int = 0
    gpu: str = ""
    gpu_gib: float = 0
    bf16: bool = True
    tflops_half: float = 0  # each GPU's dense bf16 (fp16 where it has no bf16) tensor peak
    tflops_fp32: float = 0  # each GPU's fp32 peak (no TF32)
    mem_gbs: float = 0  # memory bandwidth: each GPU's, or the VM's share of its host's
    mem_source: str = ""
    ram_gib: float = 0  # a CPU VM's memory


# Per GPU, from NVIDIA's data sheets (dense, no sparsity): peak bf16/fp16 tensor and fp32 TFLOPS, memory GB/s
_DATASHEET = "NVIDIA data sheet"
A100_PCIE_80 = dict(gpu="A100 80GB", gpu_gib=80, tflops_half=312, tflops_fp32=19.5, mem_gbs=1935, mem_source=_DATASHEET)
A100_SXM_80 = dict(gpu="A100 80GB", gpu_gib=80, tflops_half=312, tflops_fp32=19.5, mem_gbs=2039, mem_source=_DATASHEET)
A100_SXM_40 = dict(gpu="A100 40GB", gpu_gib=40, tflops_half=312, tflops_fp32=19.5, mem_gbs=1555, mem_source=_DATASHEET)
H100_NVL = dict(gpu="H100 NVL", gpu_gib=94, tflops_half=835, tflops_fp32=60, mem_gbs=3900, mem_source=_DATASHEET)
H100_SXM = dict(gpu="H100 80GB", gpu_gib=80, tflops_half=989, tflops_fp32=67, mem_gbs=3350, mem_source=_DATASHEET)
V100 = dict(
    gpu="V100 16GB", gpu_gib=16, bf16=False, tflops_half=112, tflops_fp32=14, mem_gbs=900, mem_source=_DATASHEET
)
T4 = dict(gpu="T4", gpu_gib=16, bf16=False, tflops_half=65, tflops_fp32=8.1, mem_gbs=320, mem_source=_DATASHEET)
# Azure publishes no memory bandwidth for its CPU VMs: a share of the host's, assumed at 5 GB/s per vCPU
_CPU_SHARE = "assumed: 5 GB/s per vCPU, Azure publishes none"

SKUS = {
    "Standard_NC24ads_A100_v4": Sku(3.67, 1, **A100_PCIE_80),
    "Standard_NC48ads_A100_v4": Sku(7.35, 2, **A100_PCIE_80),
    "Standard_NC96ads_A100_v4": Sku(14.69, 4, **A100_PCIE_80),
    "Standard_ND96asr_v4": Sku(27.20, 8, **A100_SXM_40),
    "Standard_ND96amsr_A100_v4": Sku(32.77, 8, **A100_SXM_80),
    "Standard_NC40ads_H100_v5": Sku(6.98, 1, **H100_NVL),
    "Standard_NC80adis_H100_v5": Sku(13.96, 2, **H100_NVL),
    "Standard_ND96isr_H100_v5": Sku(98.32, 8, **H100_SXM),
    "Standard_NC6s_v3": Sku(3.06, 1, **V100),
    "Standard_NC12s_v3": Sku(6.12, 2, **V100),
    "Standard_NC24s_v3": Sku(12.24, 4, **V100),
    "Standard_NC4as_T4_v3": Sku(0.53, 1, **T4),
    "Standard_NC8as_T4_v3": Sku(0.75, 1, **T4),
    "Standard_NC16as_T4_v3": Sku(1.20, 1, **T4),
    "Standard_NC64as_T4_v3": Sku(4.35, 4, **T4),
    "Standard_E16s_v3": Sku(1.01, mem_gbs=80, mem_source=_CPU_SHARE, ram_gib=128),  # 16 vCPU
    "Standard_E4s_v3": Sku(0.25, mem_gbs=20, mem_source=_CPU_SHARE, ram_gib=32),  # 4 vCPU: the serving VM
}
APPROX_USD_PER_HOUR = {size: sku.usd_per_hour for size, sku in SKUS.items()}


def gpu(size: str) -> Sku | None:
    """The SKU of a GPU VM size, None for a CPU size or one not listed here."""
    sku = SKUS.get(size)
    return sku if sku and sku.gpus else None


def usd(size: str, node_hours: float) -> float | None:
    """The list price of node_hours of this VM size, None when the size is not priced here."""
    price = APPROX_USD_PER_HOUR.get(size)
    return None if price is None else node_hours * price


def hourly(size: str, count: int = 1) -> str:
    """'about $3.67/h (approx. list price)' for count VMs of that size, or a pointer when unknown."""
    price = APPROX_USD_PER_HOUR.get(size)
    if price is None:
        return "price not in runner/spec/hardware.py; see the Azure pricing page"
    return f"about ${price * count:.2f}/h (approx. list price)"


def processes_per_instance(compute: dict) -> int:
    """compute.processes_per_instance as a number: auto is the GPUs of the SKU (Azure) or of this machine (local,
    unless compute.device=cpu), 1 without any."""
    n = compute.get("processes_per_instance", 1)
    if n != "auto":
        return int(n)
    if compute["kind"] == "azureml":
        sku = gpu(compute["instance_type"])
        return sku.gpus if sku else 1
    local = visible() if compute["device"] != "cpu" else None
    return local.count if local else 1


def processes(compute: dict) -> int:
    """Training processes in all: nodes x processes per node (this machine is one node)."""
    nodes = compute.get("instance_count", 1) if compute["kind"] == "azureml" else 1
    return nodes * processes_per_instance(compute)


# ---- this machine ---------------------------------------------------------------------------------


class LocalGpu(NamedTuple):
    name: str
    count: int
    gib: float


@lru_cache(maxsize=1)
def visible() -> LocalGpu | None:
    """The first GPU's name and memory and how many there are; None without an NVIDIA GPU (or driver)."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        r = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    rows = [line.rsplit(",", 1) for line in r.stdout.splitlines() if "," in line] if r.returncode == 0 else []
    if not rows:
        return None
    name, mib = rows[0]
    return LocalGpu(name.strip(), len(rows), float(mib) / 1024)
