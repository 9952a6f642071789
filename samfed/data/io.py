"""Read images and masks from disk; torch-free (the edge runtime uses it).

Every failure a user can cause (missing, unreadable, truncated or corrupt file) raises
`SamfedError` with one sentence naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from samfed.errors import SamfedError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MASK_THRESHOLD = 128

# Decode errors PIL raises for truncated/corrupt data (OSError covers "image file is truncated").
_DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def _open_decoded(path: str | Path, mode: str) -> Image.Image:
    """Open and fully decode `path` (so truncation is caught here), converted to `mode`."""
    path = Path(path)
    if not path.is_file():
        raise SamfedError(f"Image file {path} does not exist.")
    try:
        with Image.open(path) as img:
            img.load()  # full decode: truncated data fails here (unless LOAD_TRUNCATED_IMAGES is set)
            return img.convert(mode)
    except _DECODE_ERRORS as exc:
        raise SamfedError(
            f"Cannot read image {path}: it is corrupt, truncated or not an image ({exc})."
        ) from None


def read_image(path: str | Path) -> np.ndarray:
    """Read any supported image as (H, W, 3) uint8 RGB."""
    return np.asarray(_open_decoded(path, "RGB"))


def read_grey(path: str | Path) -> np.ndarray:
    """Read any supported image as (H, W) uint8 grey."""
    return np.asarray(_open_decoded(path, "L"))


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask as (H, W) bool: grey value >= 128 is foreground (JPEG masks are not exactly 0/255)."""
    return read_grey(path) >= MASK_THRESHOLD


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header only, without decoding pixels."""
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        raise SamfedError(f"Image file {path} does not exist.") from None
    except _DECODE_ERRORS as exc:
        raise SamfedError(f"Cannot read image {path}: it is corrupt or not an image ({exc}).") from None
