"""What `samfed evaluate` writes for an export or a predictions folder. Torch-free.

    per_image.csv     id, dice, iou, hd95 (one row per image, in id order)
    summary.json      what was scored, the metric conventions, mean/std/median/min/max per metric,
                      every case, and the worst cases
    overlays/NN_<id>_dice<D>.png   worst cases by Dice: ground truth | prediction, side by side

Only these files are replaced in an existing output folder.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np

from edge.evaluate import Evaluation
from edge.outputs import overlay, preview
from edge.png import write_png
from samfed.errors import SamfedError
from samfed.metrics import conventions, summarize

CSV_NAME = "per_image.csv"
SUMMARY_NAME = "summary.json"
OVERLAY_DIR = "overlays"
METRICS = ("dice", "iou", "hd95")
_OVERLAY_NAME = re.compile(r"\d{2}_.*_dice\d\.\d{3}\.png")


def summary(ev: Evaluation) -> dict:
    """The JSON-able summary: scored set, conventions, aggregate and per-case values."""
    stats = summarize(ev.rows)
    for k in METRICS:
        v = [r[k] for r in ev.rows]
        stats[k] |= {"min": float(min(v)), "max": float(max(v))}
    return {
        **ev.info,
        "data": str(ev.labeled.dataset.root),
        "ids": ev.labeled.source,
        "n_images": len(ev.rows),
        "conventions": conventions(ev.hd95_convention)
        | {"resolution": "each image's original size", "worst_cases": "lowest Dice first"},
        "metrics": stats,
        "mean": {k: stats[k]["mean"] for k in METRICS},
        "per_case": ev.rows,
        "worst": [{"id": r["id"], "dice": r["dice"]} for r, _ in ev.worst],
    }


def side_by_side(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, max_side: int = 512) -> np.ndarray:
    """(H, W, 3) image with ground truth | prediction overlays, each at most `max_side` px, 4 px apart."""
    small, g = preview(image, gt, max_side)
    _, p = preview(image, pred, max_side)
    gap = np.full((small.shape[0], 4, 3), 255, np.uint8)
    return np.hstack([overlay(small, g), gap, overlay(small, p)])


def overlay_name(rank: int, sample_id: str, dice: float) -> str:
    return f"{rank:02d}_{sample_id.replace('/', '_')}_dice{dice:.3f}.png"


def write_evaluation(ev: Evaluation, out: Path) -> dict:
    """Write per_image.csv, summary.json and the worst-case overlays to `out`; returns the summary."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / CSV_NAME, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["id", *METRICS])
            w.writeheader()
            w.writerows(
                {k: round(v, 6) if isinstance(v, float) else v for k, v in r.items()} for r in ev.rows
            )
        odir = out / OVERLAY_DIR
        if odir.is_dir():
            for old in odir.iterdir():
                if old.is_file() and _OVERLAY_NAME.fullmatch(old.name):
                    old.unlink()
        result = summary(ev)
        if ev.worst:
            odir.mkdir(exist_ok=True)
            for rank, ((row, pred), entry) in enumerate(zip(ev.worst, result["worst"], strict=True), start=1):
                image, gt = ev.labeled.pair(row["id"])
                entry["overlay"] = f"{OVERLAY_DIR}/{overlay_name(rank, row['id'], row['dice'])}"
                write_png(out / entry["overlay"], side_by_side(image, gt, pred))
        (out / SUMMARY_NAME).write_text(json.dumps(result, indent=2) + "\n")
    except OSError as exc:
        raise SamfedError(
            f"Cannot write to {out} ({exc.strerror or exc}); choose a writable --out."
        ) from None
    return result
