"""Score a student on a set: per-image Dice and HD95 (samfed.metrics conventions) and a summary.

Two resolutions: `evaluate_arrays` scores at the working size S (used every round and in the
final table of `samfed train`); `evaluate_original` maps probabilities back to each image's
original size before thresholding (used by `samfed evaluate`).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from samfed.method.arrays import SegArrays, predict_proba
from samfed.metrics import dice, evaluate_pair, summarize
from samfed.preprocess import Preprocessing


def evaluate_arrays(
    model: nn.Module, data: SegArrays, prep: Preprocessing, with_hd95: bool = True, threshold: float = 0.5
) -> list[dict]:
    """Rows {id, dice, iou, hd95} (hd95 only with with_hd95) at the working size."""
    if data.masks is None:
        raise ValueError("evaluation needs masks")
    probs = predict_proba(model, data, prep)
    rows = []
    for i, sid in enumerate(data.ids):
        pred, gt = probs[i] > threshold, data.masks[i]
        rows.append({"id": sid, **(evaluate_pair(pred, gt) if with_hd95 else {"dice": dice(pred, gt)})})
    return rows


def map_dice(probs: np.ndarray, masks: np.ndarray) -> float:
    """Mean Dice of thresholded probability maps (N, S, S) against masks (N, S, S)."""
    from samfed.metrics import dice_batch

    return float(dice_batch(probs > 0.5, masks).mean()) if len(masks) else float("nan")


def mean_of(rows: list[dict], key: str) -> float:
    s = summarize(rows)
    return s[key]["mean"] if key in s else float("nan")
