"""Segmentation metrics on binary masks: Dice, IoU, HD95 per image, and their summary.

Torch-free (numpy + scipy). Inputs are (H, W) boolean arrays (anything castable to bool), the
prediction first. Empty-mask conventions, the same for all callers:

=====================  ======  =====  ==========================================
case                   Dice    IoU    HD95
=====================  ======  =====  ==========================================
both masks empty       1.0     1.0    0.0
exactly one empty      0.0     0.0    image diagonal sqrt(H^2 + W^2) (in pixels)
=====================  ======  =====  ==========================================

HD95 is the symmetric 95th-percentile Hausdorff distance in pixels: the surface (boundary) pixels
of both masks are pooled, each with its Euclidean distance to the other mask's surface (from
`scipy.ndimage.distance_transform_edt`), and the 95th percentile of the pooled distances is taken
(the MONAI / medpy convention). The surface of a mask is its foreground pixels that have a
background 4-neighbour (pixels on the image border count as surface).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
from scipy import ndimage

_CROSS = ndimage.generate_binary_structure(2, 1)


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    return pred, gt


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice = 2|P & G| / (|P| + |G|) for (H,W) bool masks; both empty -> 1.0, one empty -> 0.0."""
    pred, gt = _pair(pred, gt)
    total = int(pred.sum()) + int(gt.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, gt).sum()) / total


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU = |P & G| / |P | G| for (H,W) bool masks; both empty -> 1.0, one empty -> 0.0."""
    pred, gt = _pair(pred, gt)
    union = int(np.logical_or(pred, gt).sum())
    return 1.0 if union == 0 else int(np.logical_and(pred, gt).sum()) / union


def surface(mask: np.ndarray) -> np.ndarray:
    """(H,W) bool -> (H,W) bool: foreground pixels with a background 4-neighbour or on the border."""
    eroded = ndimage.binary_erosion(mask, structure=_CROSS, border_value=0)
    return mask & ~eroded


def hd95(pred: np.ndarray, gt: np.ndarray, percentile: float = 95.0) -> float:
    """Symmetric 95th-percentile Hausdorff distance in pixels between (H,W) bool masks.

    Both empty -> 0.0; exactly one empty -> the image diagonal sqrt(H^2 + W^2).
    """
    pred, gt = _pair(pred, gt)
    has_p, has_g = bool(pred.any()), bool(gt.any())
    if not has_p and not has_g:
        return 0.0
    if not (has_p and has_g):
        return float(math.hypot(*pred.shape))
    # Crop to the union's bounding box: every surface pixel lies inside it, so distances are exact.
    rows, cols = np.nonzero(pred | gt)
    box = np.s_[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    sp, sg = surface(pred)[box], surface(gt)[box]
    # distance_transform_edt(~s) = distance of every pixel to the nearest surface pixel of s.
    d_p_to_g = ndimage.distance_transform_edt(~sg)[sp]
    d_g_to_p = ndimage.distance_transform_edt(~sp)[sg]
    return float(np.percentile(np.concatenate([d_p_to_g, d_g_to_p]), percentile))


def dice_batch(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Dice per image for (N,H,W) masks -> (N,) float64, vectorised; same empty conventions as `dice`.

    Accepts numpy arrays or anything `np.asarray` understands (e.g. CPU torch bool tensors).
    """
    pred, gt = _pair(pred, gt)
    if pred.ndim != 3:
        raise ValueError(f"dice_batch expects (N,H,W) masks, got {pred.shape}")
    inter = np.logical_and(pred, gt).sum(axis=(1, 2), dtype=np.int64)
    total = pred.sum(axis=(1, 2), dtype=np.int64) + gt.sum(axis=(1, 2), dtype=np.int64)
    out = np.ones(len(pred), dtype=np.float64)
    nz = total > 0
    out[nz] = 2.0 * inter[nz] / total[nz]
    return out


def evaluate_pair(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """All per-image metrics for one (H,W) prediction/ground-truth pair: dice, iou, hd95."""
    return {"dice": dice(pred, gt), "iou": iou(pred, gt), "hd95": hd95(pred, gt)}


def summarize(rows: Iterable[Mapping[str, object]]) -> dict[str, dict[str, float]]:
    """Aggregate per-image rows (dicts of metric -> value) into {metric: {mean, std, median, n}}.

    Every key whose values are all numbers (bools excluded) is summarised; other keys (e.g. `id`)
    are ignored. std is the population std (ddof=0). No rows -> {}.
    """
    rows = list(rows)
    keys = [k for k in rows[0] if all(_is_number(r.get(k)) for r in rows)] if rows else []
    out: dict[str, dict[str, float]] = {}
    for k in keys:
        v = np.asarray([float(r[k]) for r in rows], dtype=np.float64)
        out[k] = {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)), "n": len(v)}
    return out


def _is_number(x: object) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool | np.bool_)
