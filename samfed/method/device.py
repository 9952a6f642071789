"""Where training runs: ``device = "cpu"`` (default) | ``"cuda"`` | ``"cuda:N"`` | ``"auto"``.

Models live on the run's device; every batch is moved to the device of the model that consumes it
(`model_device`), so the method functions take no device argument. Random numbers (shuffling,
augmentation parameters) are still drawn from CPU generators, so the sequence of batches and
augmentations is the same on every device; CUDA results are close to, not bit-identical with, CPU
results (cuDNN kernels differ).
"""

from __future__ import annotations

import torch
from torch import nn

from samfed.errors import SamfedError


def resolve_device(name: str) -> torch.device:
    """torch.device for a setting; "auto" picks CUDA when torch sees a GPU. One-line error otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise SamfedError(f"Unknown device {name!r}; use cpu, cuda, cuda:N or auto.") from None
    if dev.type not in ("cpu", "cuda"):
        raise SamfedError(f"Device {name!r} is not supported; use cpu, cuda, cuda:N or auto.")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SamfedError(f"Device {name!r} asked for, but torch sees no CUDA GPU on this machine.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SamfedError(
                f"Device {name!r} asked for, but torch sees {torch.cuda.device_count()} GPU(s)."
            )
    return dev


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return torch.device("cpu") if p is None else p.device
