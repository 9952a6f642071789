"""What `samfed predict` writes per image: mask PNG, overlay PNG (tint + contour), a CSV row. Torch-free."""

from __future__ import annotations

import csv
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image

from edge.png import write_png
from samfed.preprocess import resize_mask

TINT = (0, 200, 80)
CONTOUR = (255, 230, 0)
ALPHA = 0.35


@dataclass
class Row:
    """One line of predictions.csv; mean_confidence is empty when the mask is empty."""

    id: str
    width: int
    height: int
    area_px: int
    area_fraction: float
    mean_confidence: float | str


CSV_HEADER = [f.name for f in fields(Row)]


def summarize(image_id: str, prob: np.ndarray, mask: np.ndarray) -> Row:
    """CSV row from (H, W) probability and mask."""
    h, w = mask.shape
    area = int(mask.sum())
    conf: float | str = round(float(prob[mask].mean()), 4) if area else ""
    return Row(image_id, w, h, area, round(area / (h * w), 6), conf)


def mask_png(mask: np.ndarray, path: Path) -> None:
    """(H, W) bool -> 8-bit grey PNG with 0/255."""
    write_png(path, mask.astype(np.uint8) * 255)


def contour(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """(H, W) bool -> (H, W) bool: mask pixels within `thickness` px of the background (4-neighbour);
    outside the array counts as background."""
    inner = mask.copy()
    for _ in range(thickness):
        eroded = inner.copy()
        eroded[[0, -1], :] = False
        eroded[:, [0, -1]] = False
        eroded[1:, :] &= inner[:-1, :]
        eroded[:-1, :] &= inner[1:, :]
        eroded[:, 1:] &= inner[:, :-1]
        eroded[:, :-1] &= inner[:, 1:]
        inner = eroded
    return mask & ~inner


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 + (H, W) bool -> (H, W, 3) uint8: mask tinted, contour drawn (~1px per 256px)."""
    out = image.copy()
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return out
    box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # work on the mask's bounding box only
    m, crop = mask[box], out[box]
    keep, add = round(256 * (1 - ALPHA)), round(256 * ALPHA)  # fixed-point blend, /256
    tinted = ((crop.astype(np.uint16) * keep + np.array(TINT, np.uint16) * add) >> 8).astype(np.uint8)
    np.copyto(crop, tinted, where=m[..., None])
    crop[contour(m, max(1, round(min(mask.shape) / 256)))] = CONTOUR
    return out


def preview(image: np.ndarray, mask: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Image (H, W, 3) and mask (H, W) scaled so the longest side is at most `max_side` (0: as is)."""
    h, w = mask.shape
    if not max_side or max(h, w) <= max_side:
        return image, mask
    f = max_side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR, reducing_gap=2.0))
    return small, resize_mask(mask, (size[1], size[0]))


def overlay_png(image: np.ndarray, mask: np.ndarray, path: Path, max_side: int = 0) -> None:
    """Overlay PNG, downscaled to `max_side` px on its longest side (0: full size)."""
    write_png(path, overlay(*preview(image, mask, max_side)))


def write_csv(rows: list[Row], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_HEADER)
        w.writerows(astuple(r) for r in rows)
