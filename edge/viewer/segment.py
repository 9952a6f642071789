"""One uploaded image -> what the page needs: an 8-bit probability map and exact statistics.

The page thresholds the map itself (its threshold slider needs no round trip), so the map's coding
makes the model's own threshold exact: a probability p is coded as round(255 g(p)), g piecewise
linear with [0, t] -> [0, 0.5] and [t, 1] -> [0.5, 1], and every pixel the model calls foreground
has a code >= 128 and every other pixel <= 127. `code >= 128` therefore reproduces the mask
`samfed predict` writes, pixel for pixel; another threshold is resolved to about max(t, 1 - t) / 128.
The map has the image's size, or MAP_MAX_SIDE on the longest side of larger images, whose
statistics at the model's threshold are still computed at full size.

Wire format of a result (`pack`): uint32 little-endian n, n bytes of UTF-8 JSON (the metadata),
then map_height x map_width codes, row-major, one byte each.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import asdict

import numpy as np

from edge.outputs import summarize
from edge.predictor import Predictor
from samfed.preprocess import prob_to_original

MAP_MAX_SIDE = 2048
FOREGROUND_CODE = 128  # codes >= this are foreground at the model's threshold
LEVELS = 4096  # probability bins of the coding table


def map_size(height: int, width: int, max_side: int = MAP_MAX_SIDE) -> tuple[int, int]:
    """(h, w) of the page's map: the image's own size, or scaled down to `max_side` on its longest side."""
    if max(height, width) <= max_side:
        return height, width
    f = max_side / max(height, width)
    return max(1, round(height * f)), max(1, round(width * f))


def probability_codes(prob: np.ndarray, threshold: float) -> np.ndarray:
    """(h, w) float probabilities in [0, 1] -> (h, w) uint8 codes round(255 g(p)) (module docstring),
    through a table over LEVELS bins (off by at most one code; `consistent` fixes the mask side)."""
    centres = (np.arange(LEVELS + 1) + 0.5) / LEVELS
    table = np.rint(np.interp(centres, (0.0, float(threshold), 1.0), (0.0, 127.5, 255.0))).astype(np.uint8)
    return np.take(table, (prob * np.float32(LEVELS)).astype(np.uint16))


def consistent(codes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`codes` with foreground pixels of `mask` raised to >= 128 and the others lowered to <= 127."""
    fg = np.maximum(codes, FOREGROUND_CODE)
    np.minimum(codes, FOREGROUND_CODE - 1, out=codes)
    np.copyto(codes, fg, where=mask)
    return codes


def segment(predictor: Predictor, image: np.ndarray, name: str = "upload") -> tuple[dict, np.ndarray]:
    """(H, W, 3) uint8 image -> (metadata, (h, w) uint8 codes). Metadata: sizes, threshold, exact
    statistics at the model's threshold (edge.outputs.Row fields) and timings in ms."""
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
    codes = consistent(probability_codes(prob, predictor.threshold), mask)
    meta = {
        "name": name,
        "width": w,
        "height": h,
        "map_width": mw,
        "map_height": mh,
        "threshold": predictor.threshold,
        "foreground_code": FOREGROUND_CODE,
        "stats": stats,
        "timing_ms": {"model": round(model_ms, 2), "segment": round((time.perf_counter() - t0) * 1e3, 2)},
    }
    return meta, codes


def pack(meta: dict, codes: np.ndarray) -> bytes:
    """The wire format of the module docstring."""
    head = json.dumps(meta).encode()
    return struct.pack("<I", len(head)) + head + np.ascontiguousarray(codes, np.uint8).tobytes()


def unpack(data: bytes) -> tuple[dict, np.ndarray]:
    """Inverse of `pack`."""
    (n,) = struct.unpack_from("<I", data)
    meta = json.loads(data[4 : 4 + n])
    codes = np.frombuffer(data, np.uint8, offset=4 + n).reshape(meta["map_height"], meta["map_width"])
    return meta, codes
