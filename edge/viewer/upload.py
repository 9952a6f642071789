"""Decode an uploaded image from memory (never from disk), refusing what the viewer cannot show.

The rule is `samfed.data.io.read_image`'s: full decode (so truncation is caught), EXIF orientation
applied, then RGB. On top of it an upload must be non-empty, a format a browser can display
(JPEG, PNG, BMP), and at most `max_pixels` pixels (checked from the header, before decoding).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from samfed.data.io import _DECODE_ERRORS
from samfed.errors import SamfedError

# PIL format -> what the page calls it; MPO is a multi-picture JPEG as some cameras write it.
FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "BMP": "BMP"}
MAX_PIXELS = 50_000_000


class BadUpload(SamfedError):
    """An upload the viewer refuses; `status` is the HTTP status to answer with (4xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def decode_upload(data: bytes, name: str = "The upload", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Image file bytes -> (H, W, 3) uint8 RGB, upright; BadUpload (400/413/415) naming `name`."""
    if not data:
        raise BadUpload(400, f"{name} is empty: choose a JPEG or PNG image.")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise BadUpload(413, f"{name} has too many pixels for the viewer (over {max_pixels:,}).") from None
    except (UnidentifiedImageError, *_DECODE_ERRORS):
        raise BadUpload(415, f"{name} is not an image the viewer can read; choose a JPEG or PNG.") from None
    with img:
        if img.format not in FORMATS:
            raise BadUpload(415, f"{name} is a {img.format} file; the viewer shows JPEG, PNG and BMP images.")
        w, h = img.size
        if w * h > max_pixels:
            raise BadUpload(
                413, f"{name} is {w} x {h} px, over the viewer's limit of {max_pixels / 1e6:g} megapixels."
            )
        if w < 1 or h < 1:
            raise BadUpload(400, f"{name} has no pixels.")
        try:
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            rgb = img if img.mode == "RGB" else img.convert("RGB")
            return np.asarray(rgb)
        except _DECODE_ERRORS as exc:
            raise BadUpload(400, f"{name} is corrupt or truncated and cannot be decoded ({exc}).") from None
