"""Losses of the client update and the server distillation, on logits (B, 1, H, W).

- `weighted_bce` / `weighted_soft_dice`: SAM-guided distillation towards an agreement pseudo-label
  with per-pixel weights (both (B, 1, H, W)); with weight 1 they are the plain supervised losses.
- `kd_loss`: KL(global || local) of the two-class (background, foreground) distributions softened
  by temperature T, times T^2 (Hinton et al.), averaged over pixels.
- `sigmoid_rampup`: exp(-5 (1 - t)^2) for t = current / length clipped to [0, 1] (Laine & Aila).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def weighted_bce(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Pixel-weighted binary cross-entropy, normalised by the weight sum (0 when all weights are 0)."""
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if weight is None:
        return per_pixel.mean()
    return (per_pixel * weight).sum() / weight.sum().clamp_min(1.0)


def weighted_soft_dice(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1.0
) -> torch.Tensor:
    """1 - soft Dice per image, weighted per pixel, averaged over the batch.

    Dice_b = (2 sum w p y + eps) / (sum w p + sum w y + eps); an image whose weighted target and
    prediction are both empty scores Dice 1 (loss 0) thanks to eps.
    """
    p = torch.sigmoid(logits)
    w = torch.ones_like(p) if weight is None else weight
    dims = tuple(range(1, p.dim()))
    inter = (w * p * target).sum(dims)
    denom = (w * p).sum(dims) + (w * target).sum(dims)
    return (1.0 - (2.0 * inter + eps) / (denom + eps)).mean()


def seg_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted BCE + weighted soft Dice (the supervised anchor when weight is None)."""
    return weighted_bce(logits, target, weight) + weighted_soft_dice(logits, target, weight)


def _two_class_log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Foreground logit z -> log softmax over (0, z) / T, shape (B, 2, H, W)."""
    z = logits / temperature
    return F.log_softmax(torch.cat([torch.zeros_like(z), z], dim=1), dim=1)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 2.0,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """T^2 * mean over pixels of KL(teacher_T || student_T) for two-class softened outputs.

    Logits (B, 1, H, W); acts on outputs only, so it works across architectures. teacher_logits
    carry no gradient. weight (B, 1, H, W) >= 0: weighted mean over pixels instead (0 if all zero).
    """
    log_q = _two_class_log_probs(student_logits, temperature)
    log_p = _two_class_log_probs(teacher_logits.detach(), temperature)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=1, keepdim=True)
    if weight is None:
        return kl.mean() * temperature**2
    return (kl * weight).sum() / weight.sum().clamp_min(1.0) * temperature**2


def sigmoid_rampup(current: float, length: float) -> float:
    """exp(-5 (1 - t)^2), t = clip(current / length, 0, 1); 1 when length <= 0."""
    if length <= 0:
        return 1.0
    t = min(max(current / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))
