"""Read images and masks from disk; torch-free (the edge runtime uses it).

Every failure a user can cause (missing, unreadable, truncated or corrupt file, a mask that is not
binary, an image and mask of different sizes) raises `SamfedError` with one sentence naming the
file. Images and masks are returned in their displayed orientation (EXIF rotation applied).

A mask file is binary in one of two encodings:
- label values: every pixel is 0 or 1 (the nnU-Net convention, 8- or 16-bit), 1 is foreground;
- 0/255-like: values near 0 and near 255 (also 16-bit 0/65535), as JPEG-compressed masks such as
  Kvasir-SEG's are; grey >= 128 is foreground.
Anything else (a colour mask, noise, a soft map with many grey levels, labels such as 0/2) raises
`MaskValueError`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

from samfed.errors import SamfedError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MASK_THRESHOLD = 128
# A 0/255-like mask has at most this fraction of mid-grey (64..191) pixels (JPEG edges, antialiasing).
NON_BINARY_FRACTION = 0.05
# ... at most this fraction of coloured pixels (channels differing by more than COLOUR_SPREAD) ...
COLOUR_FRACTION = 0.001
COLOUR_SPREAD = 48
# ... and, with no foreground at all, at most this fraction of non-zero pixels (else: labels like 0/2).
LOW_LABEL_FRACTION = 0.01
_ORIENTATION = 0x0112  # EXIF tag; values 5..8 swap width and height

# Decode errors PIL raises for truncated/corrupt data (OSError covers "image file is truncated").
_DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


class MaskValueError(SamfedError):
    """A mask file decodes but is neither a 0/1 nor a 0/255-like binary mask."""


def _open_decoded(path: str | Path, mode: str | None) -> Image.Image:
    """Open and fully decode `path` (so truncation is caught here), EXIF orientation applied,
    converted to `mode` (None: the file's own mode)."""
    path = Path(path)
    if not path.is_file():
        raise SamfedError(f"Image file {path} does not exist.")
    try:
        with Image.open(path) as img:
            img.load()  # full decode: truncated data fails here (unless LOAD_TRUNCATED_IMAGES is set)
            ImageOps.exif_transpose(img, in_place=True)
            return img if mode is None or img.mode == mode else img.convert(mode)
    except _DECODE_ERRORS as exc:
        raise SamfedError(
            f"Cannot read image {path}: it is corrupt, truncated or not an image ({exc})."
        ) from None


def read_image(path: str | Path) -> np.ndarray:
    """Read any supported image as (H, W, 3) uint8 RGB, upright (EXIF orientation applied)."""
    return np.asarray(_open_decoded(path, "RGB"))


def _grey_levels(img: Image.Image, path: Path) -> np.ndarray:
    """The mask's values as (H, W): uint8 for 8-bit and colour files (colour refused), the raw
    integers or floats for 16-bit, 32-bit and float files; palette files give their indices when
    those are all 0/1."""
    if img.mode == "1":
        return np.asarray(img, np.uint8)
    if img.mode in ("P", "PA"):
        index = np.asarray(img.convert("P") if img.mode == "PA" else img)
        if index.max(initial=0) <= 1:
            return index
        img = img.convert("RGBA")
    if img.mode.startswith(("I", "F")):
        return np.asarray(img)
    if img.mode in ("L", "LA"):
        return np.asarray(img.getchannel(0))
    rgb = img.convert("RGB")
    coloured = _coloured_fraction(rgb.reduce(4) if min(rgb.size) >= 64 else rgb)  # 4x4 means: 4x faster
    if coloured > COLOUR_FRACTION:
        raise MaskValueError(
            f"Mask {path} is a colour image ({coloured:.1%} coloured pixels); expected a grey "
            "binary mask (0/1 or 0/255)."
        )
    return np.asarray(img.convert("L"))


def _coloured_fraction(rgb: Image.Image) -> float:
    """Fraction of pixels whose channels differ by more than COLOUR_SPREAD (max - min channel)."""
    r, g, b = rgb.split()
    spread = ImageChops.lighter(
        ImageChops.lighter(ImageChops.difference(r, g), ImageChops.difference(g, b)),
        ImageChops.difference(r, b),
    )
    hist = spread.histogram()
    return sum(hist[COLOUR_SPREAD + 1 :]) / max(1, rgb.width * rgb.height)


def _to_8bit(values: np.ndarray, path: Path) -> np.ndarray:
    """Deeper-than-8-bit mask values on the 0..255 scale (16-bit full scale, floats in 0..1)."""
    if values.dtype == np.uint8:
        return values
    if values.dtype.kind == "f":
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 255:
            raise MaskValueError(f"Mask {path} holds float values outside 0..255; expected a binary mask.")
        scale = 255.0 if values.max() <= 1 else 1.0
        return np.rint(values * scale).astype(np.uint8)
    if values.min() < 0 or values.max() > 65535:
        raise MaskValueError(f"Mask {path} holds values outside 0..65535; expected a binary mask.")
    return (values // 257 if values.max() > 255 else values).astype(np.uint8)


def mask_from_values(values: np.ndarray, path: str | Path) -> np.ndarray:
    """(H, W) bool foreground from a mask's (H, W) values by the rules of this module's docstring;
    raises MaskValueError naming `path` when they are not a binary mask."""
    path = Path(path)
    if values.size and values.min() >= 0 and values.max() <= 1 and np.array_equal(values, values != 0):
        return values == 1
    grey = _to_8bit(values, path)
    n = max(1, grey.size)
    mid = (np.count_nonzero(grey >= 64) - np.count_nonzero(grey >= 192)) / n
    if mid > NON_BINARY_FRACTION:
        levels = len(np.unique(grey))
        raise MaskValueError(
            f"Mask {path} has {mid:.0%} grey pixels between 64 and 191 ({levels} grey levels); "
            "expected a binary mask (0/1 or 0/255)."
        )
    foreground = grey >= MASK_THRESHOLD
    if not foreground.any() and np.count_nonzero(grey) / n > LOW_LABEL_FRACTION:
        raise MaskValueError(
            f"Mask {path} has values up to {values.max():g} but no foreground at 0/255 scale; "
            "expected a binary mask with values 0/1 or 0/255."
        )
    return foreground


def read_mask(path: str | Path) -> np.ndarray:
    """Read a binary mask as (H, W) bool, upright: 0/1 label files and 0/255-like files (JPEG
    masks are not exactly 0/255; grey >= 128 is foreground). Raises MaskValueError otherwise."""
    img = _open_decoded(path, None)
    return mask_from_values(_grey_levels(img, Path(path)), path)


def size_mismatch(
    image_shape: tuple[int, ...], mask_shape: tuple[int, ...], image: Path, mask: Path
) -> str | None:
    """The sentence saying that `mask` and `image` differ in size, or None when (H, W) agree."""
    if tuple(mask_shape[:2]) == tuple(image_shape[:2]):
        return None
    return (
        f"Mask {mask} is {mask_shape[1]}x{mask_shape[0]} px but its image {image.name} is "
        f"{image_shape[1]}x{image_shape[0]} px."
    )


def read_pair(image: str | Path, mask: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """An image (H, W, 3) uint8 and its mask (H, W) bool; raises SamfedError when either cannot be
    read, the mask is not binary, or their sizes differ."""
    rgb, m = read_image(image), read_mask(mask)
    problem = size_mismatch(rgb.shape, m.shape, Path(image), Path(mask))
    if problem is not None:
        raise SamfedError(problem)
    return rgb, m


def image_size(path: str | Path) -> tuple[int, int]:
    """Upright (width, height) from the file header only (EXIF orientation applied), without
    decoding pixels."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            return (h, w) if img.getexif().get(_ORIENTATION) in (5, 6, 7, 8) else (w, h)
    except FileNotFoundError:
        raise SamfedError(f"Image file {path} does not exist.") from None
    except _DECODE_ERRORS as exc:
        raise SamfedError(f"Cannot read image {path}: it is corrupt or not an image ({exc}).") from None
