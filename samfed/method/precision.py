"""Training speed: bfloat16 autocast with channels-last tensors (opt-in, ``precision = "bf16"``).

Meant for CPUs with AMX/AVX-512-BF16 and for GPUs (docs/method.md has the measured speed-up).
Weights, optimiser state, losses and returned state dicts stay float32 and contiguous; only the
convolutions run in bfloat16. The result is deterministic on one machine, but not bit-identical to
``"fp32"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16")
BF16_EMULATED = "no AMX or AVX512-BF16, so precision bf16 is emulated and slower than fp32"


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 convolutions run in hardware: any GPU, or a CPU with AMX or AVX512-BF16.
    Elsewhere torch emulates them, several times slower than float32."""
    if device.type != "cpu":
        return True
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    checks = [getattr(torch.cpu, name, None) for name in probes]
    if not any(checks):
        return True  # this torch cannot tell: trust the user's choice
    return any(check() for check in checks if check is not None)


@contextmanager
def training_layout(precision: str, *models: nn.Module | None) -> Iterator[None]:
    """Channels-last weights for the duration of a bf16 training loop, contiguous again afterwards."""
    moved = [m for m in models if m is not None] if precision == "bf16" else []
    for m in moved:
        m.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for m in moved:
            m.to(memory_format=torch.contiguous_format)


def forward(model: nn.Module, x: torch.Tensor, precision: str) -> torch.Tensor:
    """model(x) for x (B, 3, S, S); with "bf16" under bfloat16 autocast. Returns float32 logits."""
    if precision != "bf16":
        return model(x)
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        out = model(x.contiguous(memory_format=torch.channels_last))
    return out.float().contiguous()
