"""The single definition of student preprocessing, shared by training, export and the edge runtime.

Torch-free on purpose: the edge runtime imports this module, so train and deploy cannot drift apart.
Convention: stretch-resize the RGB image to `size x size` (bilinear), scale to [0, 1], then normalise
with the ImageNet mean/std. Masks are resized with nearest neighbour and binarised.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB uint8 image becomes a student input tensor; stored in every run and manifest."""

    size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "stretch-bilinear"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(size=int(d["size"]), mean=tuple(d["mean"]), std=tuple(d["std"]), resize=d["resize"])


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8, bilinear stretch."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """(H, W) bool -> (size, size) bool (or (h, w) when size is a tuple), nearest neighbour."""
    h, w = (size, size) if isinstance(size, int) else size
    if mask.shape == (h, w):
        return mask.astype(bool)
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((w, h), Image.NEAREST)) > 127


def normalize(image: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """(..., S, S, 3) uint8 -> (..., 3, S, S) float32 normalised; works on one image or a batch."""
    x = image.astype(np.float32) / 255.0
    x = (x - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def to_input(image: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """(H, W, 3) uint8 of any size -> (3, S, S) float32 student input."""
    return normalize(resize_image(image, prep.size), prep)


def prob_to_original(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(S, S) float probability -> (H, W) float32 at the original image size (bilinear)."""
    h, w = shape
    img = Image.fromarray(prob.astype(np.float32), mode="F")
    return np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.float32)
