"""Score a student on a set: per-image Dice and HD95 (samfed.metrics conventions) and a summary.

Two resolutions: `evaluate_arrays` scores at the working size S (used every round and in the
final table of `samfed train`); `evaluate_original` maps probabilities back to each image's
original size before thresholding (used by `samfed evaluate`). `panel_rows` picks the few
validation images of the report's qualitative panel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from samfed.method.arrays import SegArrays, predict_proba
from samfed.metrics import dice, evaluate_pair
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


@dataclass
class PanelRow:
    """One validation image of the report's qualitative panel, all at the working size S.

    image (S, S, 3) uint8; truth and student (S, S) bool; teacher (S, S) float probabilities and
    pseudo (S, S) bool, or None for methods without them; dice: per-image Dice of each map."""

    id: str
    image: np.ndarray
    truth: np.ndarray
    student: np.ndarray
    teacher: np.ndarray | None
    pseudo: np.ndarray | None
    dice: dict[str, float]


def spread(order: np.ndarray, n: int) -> list[int]:
    """n entries of `order` (indices sorted worst to best) spread evenly from its first to its last."""
    if len(order) <= n:
        return [int(i) for i in order]
    return [int(order[j]) for j in np.linspace(0, len(order) - 1, n).round().astype(int)]


def pseudo_labels(
    cfg, teacher: np.ndarray | None, glob_p: np.ndarray, local_p: np.ndarray
) -> np.ndarray | None:
    """(N, S, S) bool pseudo-labels the method would train on in its last round for images with
    teacher maps `teacher`, global and local probabilities (N, S, S); pixels of weight 0 count as
    background. None for methods without pseudo-labels (or without the teacher maps they need)."""
    import torch

    from samfed.method.agreement import agreement
    from samfed.method.local_update import ramps
    from samfed.method.methods import method_spec

    pseudo = method_spec(cfg.method).pseudo
    if pseudo == "self":
        conf = np.maximum(local_p, 1 - local_p)
        return (local_p > 0.5) & (conf >= cfg.fixmatch_threshold)
    if pseudo not in ("agreement", "teacher") or teacher is None:
        return None
    t = lambda a: torch.from_numpy(np.asarray(a, np.float32))[:, None]  # noqa: E731
    variant = "teacher" if pseudo == "teacher" else cfg.agreement
    label, weight = agreement(
        t(teacher), t(glob_p), t(local_p), variant, ramp=ramps(cfg, cfg.rounds).agree, tau=cfg.agreement_tau
    )
    return ((label > 0.5) & (weight > 0))[:, 0].numpy()


def panel_rows(
    cfg, sets, glob: nn.Module, clients: list[nn.Module], prep: Preprocessing, n: int = 4
) -> list[PanelRow]:
    """`n` validation images spread from the final global model's worst to its best Dice, with
    their teacher map and pseudo-label (client 0's model as the local student)."""
    from samfed.metrics import dice_batch

    val = sets.val
    glob_p = predict_proba(glob, val, prep)
    local_p = predict_proba(clients[0], val, prep) if clients else glob_p
    student = glob_p > 0.5
    pseudo = pseudo_labels(cfg, sets.val_maps, glob_p, local_p)
    scores = {"student": dice_batch(student, val.masks)}
    if sets.val_maps is not None:
        scores["teacher"] = dice_batch(sets.val_maps > 0.5, val.masks)
    if pseudo is not None:
        scores["pseudo"] = dice_batch(pseudo, val.masks)
    rows = []
    for i in spread(np.argsort(scores["student"], kind="stable"), n):
        rows.append(
            PanelRow(
                id=val.ids[i],
                image=val.images[i],
                truth=val.masks[i].astype(bool),
                student=student[i],
                teacher=None if sets.val_maps is None else sets.val_maps[i],
                pseudo=None if pseudo is None else pseudo[i],
                dice={k: float(v[i]) for k, v in scores.items()},
            )
        )
    return rows
