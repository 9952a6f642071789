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
