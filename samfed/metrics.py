"""Segmentation metrics on binary masks: Dice, IoU, HD95 per image, and their summary.

Torch-free and scipy-free (numpy only), so the edge runtime can score a deployed model. Inputs are
(H, W) boolean arrays (anything castable to bool), the prediction first. Empty-mask conventions,
the same for all callers and both HD95 conventions:

=====================  ======  =====  ==========================================
case                   Dice    IoU    HD95
=====================  ======  =====  ==========================================
both masks empty       1.0     1.0    0.0
exactly one empty      0.0     0.0    image diagonal sqrt(H^2 + W^2) (in pixels)
=====================  ======  =====  ==========================================

(medpy raises and MONAI returns NaN/inf for an empty mask; a finite worst case keeps means usable.)

HD95 is a 95th-percentile Hausdorff distance in pixels between the surfaces (boundaries) of the
two masks. The surface of a mask is its foreground pixels that have a background 4-neighbour
(pixels on the image border count as surface). Each surface pixel has an exact Euclidean distance
to the other mask's surface (the two directed distance sets). Two conventions (`HD95_CONVENTIONS`):

- ``pooled`` (default): the 95th percentile of both directed sets pooled together, as
  ``medpy.metric.binary.hd95``;
- ``max``: the larger of the two directed 95th percentiles, as MONAI's
  ``compute_hausdorff_distance(percentile=95)`` (``directed=False``).

``max`` >= ``pooled`` always; they agree when both directions have the same distribution.
Percentiles use numpy's linear interpolation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

HD95_CONVENTIONS = {
    "pooled": "95th percentile of the pooled directed surface distances of both directions "
    "(medpy.metric.binary.hd95)",
    "max": "max of the two directed 95th-percentile surface distances "
    "(MONAI compute_hausdorff_distance(percentile=95))",
}
DEFAULT_HD95 = "pooled"
EMPTY_CONVENTION = (
    "both masks empty: Dice 1, IoU 1, HD95 0; exactly one empty: Dice 0, IoU 0, "
    "HD95 the image diagonal sqrt(H^2 + W^2) px"
)
_CHUNK = 1 << 22  # elements of one (queries x columns) block in `_distances_to`


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
    m = np.pad(np.asarray(mask, bool), 1)
    interior = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m[1:-1, 1:-1] & ~interior


def _column_gaps(features: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (H, W) float64: vertical distance of each pixel to the nearest True pixel in
    its own column (inf in a column without one)."""
    h = features.shape[0]
    rows = np.arange(h, dtype=np.float64)[:, None]
    above = np.maximum.accumulate(np.where(features, rows, -np.inf), axis=0)
    below = np.minimum.accumulate(np.where(features, rows, np.inf)[::-1], axis=0)[::-1]
    return np.minimum(rows - above, below - rows)


def _distances_to(queries: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance of each True pixel of `queries` to the nearest True pixel of
    `features` (same (H, W) shape, `features` non-empty) -> (N,) float64 in row-major order.

    d^2(r, c) = min over columns j of (c - j)^2 + gap_j(r)^2, gap_j the in-column distance.
    """
    cols = np.flatnonzero(features.any(axis=0))
    gaps = _column_gaps(features[:, cols])
    qr, qc = np.nonzero(queries)
    out = np.empty(len(qr), dtype=np.float64)
    step = max(1, _CHUNK // len(cols))
    for s in range(0, len(qr), step):
        dc = qc[s : s + step, None] - cols[None, :]
        out[s : s + step] = (dc * dc + gaps[qr[s : s + step]] ** 2).min(axis=1)
    return np.sqrt(out)


def check_hd95_convention(convention: str) -> str:
    """`convention` if it names an HD95 convention; ValueError listing the known ones otherwise."""
    if convention not in HD95_CONVENTIONS:
        raise ValueError(f"unknown HD95 convention {convention!r}; expected {' or '.join(HD95_CONVENTIONS)}")
    return convention


def hd95(
    pred: np.ndarray, gt: np.ndarray, percentile: float = 95.0, *, convention: str = DEFAULT_HD95
) -> float:
    """95th-percentile Hausdorff distance in pixels between (H,W) bool masks, symmetric in its
    arguments, by `convention` ("pooled": medpy's hd95, "max": MONAI's; see the module docstring).

    Both empty -> 0.0; exactly one empty -> the image diagonal sqrt(H^2 + W^2).
    """
    check_hd95_convention(convention)
    pred, gt = _pair(pred, gt)
    has_p, has_g = bool(pred.any()), bool(gt.any())
    if not has_p and not has_g:
        return 0.0
    if not (has_p and has_g):
        return float(math.hypot(*pred.shape))
    # Crop to the union's bounding box: every surface pixel lies inside it, so distances are exact.
    rows, cols = np.nonzero(pred | gt)
    box = np.s_[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    sp, sg = surface(pred[box]), surface(gt[box])
    p_to_g, g_to_p = _distances_to(sp, sg), _distances_to(sg, sp)
    if convention == "max":
        return float(max(np.percentile(p_to_g, percentile), np.percentile(g_to_p, percentile)))
    return float(np.percentile(np.concatenate([p_to_g, g_to_p]), percentile))


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


def evaluate_pair(pred: np.ndarray, gt: np.ndarray, hd95_convention: str = DEFAULT_HD95) -> dict[str, float]:
    """All per-image metrics for one (H,W) prediction/ground-truth pair: dice, iou, hd95."""
    return {"dice": dice(pred, gt), "iou": iou(pred, gt), "hd95": hd95(pred, gt, convention=hd95_convention)}


def conventions(hd95_convention: str = DEFAULT_HD95) -> dict[str, str]:
    """The metric conventions in force, for summaries: HD95 definition and empty-mask handling."""
    return {
        "hd95": f"{check_hd95_convention(hd95_convention)}: {HD95_CONVENTIONS[hd95_convention]}",
        "hd95_units": "pixels at the image's original size",
        "surface": "foreground pixels with a background 4-neighbour (image border counts as background)",
        "empty_masks": EMPTY_CONVENTION,
    }


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
