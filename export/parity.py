"""Parity of an exported artefact against torch: mask Dice and logit differences. Torch-free.

Masks are compared at model resolution (what the runtimes produce); Dice against ground truth is
computed at each image's original size, as `samfed predict` would deliver it.
"""

from __future__ import annotations

import numpy as np

from edge.predictor import sigmoid
from samfed.metrics import dice
from samfed.preprocess import prob_to_original


def mask_agreement(ref_logits: np.ndarray, logits: np.ndarray, threshold: float = 0.5) -> dict:
    """(N, 1, S, S) reference vs candidate logits -> Dice of thresholded masks and max |logit diff|."""
    ref_m = sigmoid(ref_logits[:, 0]) >= threshold
    m = sigmoid(logits[:, 0]) >= threshold
    d = np.array([dice(a, b) for a, b in zip(m, ref_m, strict=True)])
    return {
        "n": len(d),
        "dice_mean": round(float(d.mean()), 5),
        "dice_min": round(float(d.min()), 5),
        "max_abs_logit_diff": float(np.abs(logits - ref_logits).max()),
        "mean_abs_logit_diff": float(np.abs(logits - ref_logits).mean()),
    }


def dice_vs_gt(logits: np.ndarray, gts: list[np.ndarray], threshold: float = 0.5) -> float:
    """Mean Dice of (N, 1, S, S) logits, upsampled to each (H, W) bool ground truth, against it."""
    probs = sigmoid(logits[:, 0])
    scores = [dice(prob_to_original(p, g.shape) >= threshold, g) for p, g in zip(probs, gts, strict=True)]
    return float(np.mean(scores))


def nonfinite_images(logits: np.ndarray) -> int:
    """How many of the (N, ...) outputs hold a NaN or an infinity."""
    return int((~np.isfinite(logits.reshape(len(logits), -1))).any(axis=1).sum())


def run_batched(fn, x: np.ndarray, batch: int = 8) -> np.ndarray:
    """Apply fn to (N, ...) in chunks of `batch` and concatenate."""
    return np.concatenate([fn(x[i : i + batch]) for i in range(0, len(x), batch)])
