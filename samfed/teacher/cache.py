"""Teacher probability maps cached on disk, computed once per image; torch-free.

Key: sha256 of the image array (shape + bytes) + the teacher's hash + prompt mode + out_size
(+ the prompt box when one is given). Maps are stored as compressed uint8 (round(prob * 255)) and
returned as float32 / 255 — also when freshly computed, so results never depend on the cache state.
Works with any teacher exposing ``hash``, ``prompt`` and ``predict_proba`` (torch `Teacher` or
`edge.teacher_runtime.OnnxTeacher`).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from samfed.fileio import atomic_write_bytes


def image_digest(image: np.ndarray) -> str:
    """sha256 of an image array's shape, dtype and bytes."""
    a = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{a.shape}{a.dtype}".encode())
    digest.update(a.data)
    return digest.hexdigest()


def quantize(prob: np.ndarray) -> np.ndarray:
    """float probabilities in [0, 1] -> uint8 (round(prob * 255))."""
    return np.clip(np.rint(np.asarray(prob, np.float32) * 255.0), 0, 255).astype(np.uint8)


def dequantize(q: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) / 255.0


class TeacherMapCache:
    """One ``.npz`` per (image, teacher, prompt, out_size) under ``root/<teacher hash[:16]>/``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, image_key: str, teacher_hash: str, variant: str) -> Path:
        v = hashlib.sha256(variant.encode()).hexdigest()[:16]
        return self.root / teacher_hash[:16] / f"{image_key}_{v}.npz"

    def get(self, image_key: str, teacher_hash: str, variant: str) -> np.ndarray | None:
        """The cached uint8 map, or None (also for an unreadable entry, which is then recomputed)."""
        p = self.path(image_key, teacher_hash, variant)
        if not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                return z["prob"]
        except (OSError, ValueError, KeyError):
            return None

    def put(self, image_key: str, teacher_hash: str, variant: str, q: np.ndarray) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, prob=q)
        # atomic: concurrent readers never see half a file
        atomic_write_bytes(self.path(image_key, teacher_hash, variant), buf.getvalue())


def _variant(prompt: str, out_size: int, box: np.ndarray | None) -> str:
    box_s = "" if box is None else ",".join(f"{v:.2f}" for v in np.asarray(box, np.float32).reshape(-1))
    return f"prompt={prompt};out={out_size};box={box_s}"


def teacher_maps(
    teacher,
    images: np.ndarray | Sequence[np.ndarray],
    cache: TeacherMapCache | None,
    out_size: int,
    boxes: np.ndarray | None = None,
    prompt_masks: Sequence[np.ndarray] | None = None,
    batch_size: int = 8,
) -> np.ndarray:
    """Teacher probabilities (B, out_size, out_size) float32 for images (B, H, W, 3) uint8 (or a list
    of differently sized ones), computing only the ones missing from `cache` (None: no cache).

    boxes / prompt_masks as in `Teacher.predict_proba`; with ``global-box`` the prompt mask's box is
    part of the key, so a new global model gives new maps.
    """
    from samfed.teacher.transforms import box_from_mask

    n = len(images)
    if boxes is not None:
        keyboxes = list(np.asarray(boxes, np.float32).reshape(-1, 4))
    elif teacher.prompt == "global-box" and prompt_masks is not None:
        # the normalised box of each prompt mask identifies the prompt
        keyboxes = []
        for m in prompt_masks:
            b = box_from_mask(np.asarray(m, bool))
            keyboxes.append(None if b is None else b / np.array([*m.shape[::-1]] * 2, np.float32))
    else:
        keyboxes = [None] * n
    th = teacher.hash
    keys = [image_digest(np.asarray(im)) for im in images]
    variants = [_variant(teacher.prompt, out_size, b) for b in keyboxes]
    out = np.zeros((n, out_size, out_size), np.uint8)
    missing = []
    for i in range(n):
        q = None if cache is None else cache.get(keys[i], th, variants[i])
        if q is None or q.shape != (out_size, out_size):
            missing.append(i)
        else:
            out[i] = q
    for s in range(0, len(missing), batch_size):
        idx = missing[s : s + batch_size]
        probs = teacher.predict_proba(
            [images[i] for i in idx],
            out_size,
            boxes=None if boxes is None else np.asarray(boxes, np.float32).reshape(-1, 4)[idx],
            prompt_masks=None if prompt_masks is None else [prompt_masks[i] for i in idx],
            batch_size=batch_size,
        )
        for i, p in zip(idx, probs, strict=True):
            out[i] = quantize(p)
            if cache is not None:
                cache.put(keys[i], th, variants[i], out[i])
    return dequantize(out)
