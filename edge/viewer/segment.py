"""One uploaded image -> what the page needs: an 8-bit probability map and exact statistics.

The page thresholds the map itself (its threshold slider needs no round trip), so the map's coding
is chosen to make the model's own threshold exact: probabilities are mapped piecewise linearly,
[0, t] -> [0, 127.5] and [t, 1] -> [127.5, 255], rounded, and every pixel the model calls
foreground has a code >= 128 and every other pixel <= 127. `q >= 128` therefore reproduces the
mask `samfed predict` writes, pixel for pixel; other thresholds are resolved to about
max(t, 1 - t) / 128. The map is at the image's size, or scaled to MAP_MAX_SIDE on its longest side
for larger images (then the statistics at the model's threshold are still computed at full size).
"""

from __future__ import annotations

import base64
import time
from dataclasses import asdict

import numpy as np

from edge.outputs import summarize
from edge.png import encode_png
from edge.predictor import Predictor
from samfed.preprocess import prob_to_original

MAP_MAX_SIDE = 2048
FOREGROUND_CODE = 128  # codes >= this are foreground at the model's threshold


def map_size(height: int, width: int, max_side: int = MAP_MAX_SIDE) -> tuple[int, int]:
    """(h, w) of the page's map: the image's own size, or scaled down to `max_side` on its longest side."""
    if max(height, width) <= max_side:
        return height, width
    f = max_side / max(height, width)
    return max(1, round(height * f)), max(1, round(width * f))


def encode_probability(prob: np.ndarray, mask: np.ndarray, threshold: float) -> np.ndarray:
    """(h, w) float probability + (h, w) bool mask at `threshold` -> (h, w) uint8 codes (module docstring)."""
    t = float(threshold)
    u = np.interp(prob, (0.0, t, 1.0), (0.0, 127.5, 255.0))
    q = np.rint(u).astype(np.uint8)
    return np.where(mask, np.maximum(q, FOREGROUND_CODE), np.minimum(q, FOREGROUND_CODE - 1)).astype(np.uint8)


def segment(predictor: Predictor, image: np.ndarray, name: str = "upload") -> dict:
    """(H, W, 3) uint8 image -> JSON-able dict: sizes, threshold, base64 PNG of the map codes,
    exact statistics at the model's threshold (edge.outputs.Row fields) and timings in ms."""
    t0 = time.perf_counter()
    h, w = image.shape[:2]
    model_s0 = predictor.session.model_seconds
    prob_small = predictor.probs_resized(predictor.prepare(image)[None])[0]
    model_ms = (predictor.session.model_seconds - model_s0) * 1e3
    pred = predictor.finish(prob_small, (h, w))
    stats = asdict(summarize(name, pred.prob, pred.mask))
    mh, mw = map_size(h, w)
    if (mh, mw) == (h, w):
        prob, mask = pred.prob, pred.mask
    else:
        prob = prob_to_original(prob_small, (mh, mw))
        mask = prob >= predictor.threshold
    png = encode_png(encode_probability(prob, mask, predictor.threshold))
    return {
        "name": name,
        "width": w,
        "height": h,
        "map_width": mw,
        "map_height": mh,
        "threshold": predictor.threshold,
        "foreground_code": FOREGROUND_CODE,
        "map_png": base64.b64encode(png).decode("ascii"),
        "stats": stats,
        "timing_ms": {"model": round(model_ms, 2), "segment": round((time.perf_counter() - t0) * 1e3, 2)},
    }
