"""Rough hourly prices of the VM sizes in conf/, for the cost lines of plan mode.

Approximate pay-as-you-go Linux list prices in USD per hour (East US 2, 2025); your region, discounts and
reservations change them. https://azure.microsoft.com/pricing/details/machine-learning/ has the real ones.
"""
AS_OF = "East US 2 list prices, 2025"
APPROX_USD_PER_HOUR = {
    "Standard_NC24ads_A100_v4": 3.67,  # 1x A100 80GB, 24 vCPU
    "Standard_NC48ads_A100_v4": 7.35,  # 2x A100 80GB, 48 vCPU
    "Standard_E16s_v3": 1.01,          # 16 vCPU, 128 GiB
    "Standard_E4s_v3": 0.25,           # 4 vCPU, 32 GiB: the serving VM
}


def usd(size: str, node_hours: float) -> float | None:
    """The list price of node_hours of this VM size, None when the size is not priced here."""
    price = APPROX_USD_PER_HOUR.get(size)
    return None if price is None else node_hours * price


def hourly(size: str, count: int = 1) -> str:
    """'about $3.67/h (approx. list price)' for count VMs of that size, or a pointer when unknown."""
    price = APPROX_USD_PER_HOUR.get(size)
    if price is None:
        return "price not in runner/azure/prices.py; see the Azure pricing page"
    return f"about ${price * count:.2f}/h (approx. list price)"
