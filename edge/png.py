"""A minimal, fast PNG writer for 8-bit grey and RGB arrays. Torch-free.

Every row uses the PNG "Up" filter (computed with numpy) and deflate runs with the Z_RLE strategy:
for segmentation overlays this is ~2.4x less CPU than Pillow's adaptive filtering at
compress_level=1 and gives smaller files; masks shrink to a few KB. `zlib` releases the GIL, so
writer threads overlap with inference. Output is standard PNG (read back by any decoder).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILTER_UP = 2


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def encode_png(image: np.ndarray, level: int = 1) -> bytes:
    """(H, W) or (H, W, 3) uint8 -> PNG bytes."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"expected (H, W) or (H, W, 3) uint8, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    color_type = 0 if image.ndim == 2 else 2  # grey | RGB
    rows = image.reshape(h, -1)
    raw = np.empty((h, rows.shape[1] + 1), np.uint8)
    raw[:, 0] = FILTER_UP
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])  # uint8 wrap-around == PNG's mod-256 filter
    comp = zlib.compressobj(level, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    idat = comp.compress(raw.data) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def write_png(path: str | Path, image: np.ndarray, level: int = 1) -> None:
    """Write (H, W) or (H, W, 3) uint8 as PNG."""
    Path(path).write_bytes(encode_png(image, level))
