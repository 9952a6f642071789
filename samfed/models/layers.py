"""Building blocks shared by the student families: norm choice, conv-norm-act, upsampling.

Only ONNX-friendly ops (Conv, BatchNorm/GroupNorm, ReLU/ReLU6, Resize, Concat, Add, Mul, Sigmoid,
GlobalAveragePool). Activations are never in-place, so full backward hooks (Opacus, differential
privacy) work on every module.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Norm = Literal["batch", "group"]
NORMS: tuple[str, ...] = ("batch", "group")


def group_count(channels: int, max_groups: int = 8) -> int:
    """Largest number of groups <= `max_groups` that divides `channels`."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def norm_layer(norm: str, channels: int) -> nn.Module:
    """BatchNorm2d (`batch`) or GroupNorm with up to 8 groups (`group`, DP-compatible)."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(group_count(channels), channels)
    raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias) -> norm -> activation (ReLU, ReLU6 or none). (B,Cin,H,W) -> (B,Cout,H/s,W/s)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        norm: str = "batch",
        act: str | None = "relu",
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            norm_layer(norm, cout),
        ]
        if act == "relu":
            layers.append(nn.ReLU())
        elif act == "relu6":
            layers.append(nn.ReLU6())
        elif act is not None:
            raise ValueError(f"unknown activation {act!r}")
        super().__init__(*layers)


def upsample(x: torch.Tensor, mode: str = "nearest", factor: int = 2) -> torch.Tensor:
    """Resize by an integer factor (exports as a single ONNX Resize with a constant scale)."""
    if mode == "nearest":
        return nn.functional.interpolate(x, scale_factor=factor, mode="nearest")
    return nn.functional.interpolate(x, scale_factor=factor, mode=mode, align_corners=False)


class Student(nn.Module):
    """Base class: input (B,3,S,S) normalised float, output logits (B,1,S,S); S divisible by `stride`."""

    stride: int = 16

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear ValueError for a wrong input shape (skipped while tracing/exporting)."""
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"student input must be (B,3,S,S), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(f"student input size must be divisible by {self.stride}, got {h}x{w}")
