"""Weak (geometric) and strong (photometric) augmentation on batched tensors, driven by a generator.

Weak: random horizontal/vertical flips, small rotation and scale, one affine transform per sample
applied identically (through `affine_grid`) to the image and to every aligned map (teacher
probabilities, ground truth), so cached maps follow the image. Strong: colour jitter (brightness,
contrast, saturation) of the student input only; it changes no geometry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from samfed.preprocess import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class WeakAug:
    """Geometric augmentation settings: flip probability, max rotation (degrees), scale range."""

    flip: float = 0.5
    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.9, 1.1)


@dataclass(frozen=True)
class StrongAug:
    """Colour jitter strengths (factors drawn from [1 - x, 1 + x])."""

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def weak_theta(n: int, gen: torch.Generator, aug: WeakAug = WeakAug()) -> torch.Tensor:
    """(n, 2, 3) affine matrices (flip * rotation * scale) for `F.affine_grid`."""
    angle = _uniform(n, -aug.rotate_deg, aug.rotate_deg, gen) * math.pi / 180.0
    scale = _uniform(n, aug.scale[0], aug.scale[1], gen)
    fx = torch.where(torch.rand(n, generator=gen) < aug.flip, -1.0, 1.0)
    fy = torch.where(torch.rand(n, generator=gen) < aug.flip, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * fx, -sin * fy
    theta[:, 1, 0], theta[:, 1, 1] = sin * fx, cos * fy
    return theta


def apply_theta(x: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Warp (B, C, H, W) with (B, 2, 3) matrices; reflection padding so borders stay plausible."""
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="reflection", align_corners=False)


def weak_augment(
    images: torch.Tensor,
    maps: list[torch.Tensor | None],
    gen: torch.Generator,
    aug: WeakAug = WeakAug(),
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Same random geometry for images (B, 3, H, W) and each map (B, 1, H, W) (None passes through).

    Maps are resampled bilinearly and stay probabilities; binary maps (ground truth) are
    re-binarised at 0.5.
    """
    theta = weak_theta(images.shape[0], gen, aug)
    out = []
    for m in maps:
        if m is None:
            out.append(None)
            continue
        w = apply_theta(m.float(), theta)
        binary = bool(((m == 0) | (m == 1)).all())
        out.append((w > 0.5).float() if binary else w.clamp(0.0, 1.0))
    return apply_theta(images, theta), out


def strong_augment(images: torch.Tensor, gen: torch.Generator, aug: StrongAug = StrongAug()) -> torch.Tensor:
    """Colour jitter of ImageNet-normalised images (B, 3, H, W); returns normalised images."""
    n = images.shape[0]
    dev = images.device
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=dev).view(1, 3, 1, 1)
    x = images * std + mean
    b = _uniform(n, 1 - aug.brightness, 1 + aug.brightness, gen).view(n, 1, 1, 1).to(dev)
    c = _uniform(n, 1 - aug.contrast, 1 + aug.contrast, gen).view(n, 1, 1, 1).to(dev)
    s = _uniform(n, 1 - aug.saturation, 1 + aug.saturation, gen).view(n, 1, 1, 1).to(dev)
    x = (x * b).clamp(0, 1)
    grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).to(x.dtype)
    x = ((x - grey.mean(dim=(2, 3), keepdim=True)) * c + grey.mean(dim=(2, 3), keepdim=True)).clamp(0, 1)
    grey = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    x = ((x - grey) * s + grey).clamp(0, 1)
    return (x - mean) / std
