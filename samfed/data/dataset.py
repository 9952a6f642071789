"""Torch dataset over a dataset folder: images decoded once, resized and cached as uint8 in memory."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from samfed.data.io import read_image, read_pair
from samfed.data.readers import Dataset, Sample
from samfed.errors import SamfedError
from samfed.preprocess import Preprocessing, normalize, resize_image, resize_mask

# (image (S,S,3) uint8, mask (S,S) bool or None) -> the same, e.g. a random flip; applied per item.
Transform = Callable[[np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray | None]]


def _samples(dataset: Dataset | Sequence[Sample], ids: Sequence[str] | None) -> list[Sample]:
    if isinstance(dataset, Dataset):
        return list(dataset.samples) if ids is None else dataset.select(list(ids))
    samples = list(dataset)
    if ids is None:
        return samples
    by_id = {s.id: s for s in samples}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise SamfedError(f"Id {missing[0]!r} is not among the given samples ({len(missing)} ids missing).")
    return [by_id[i] for i in ids]


def _load_all(samples: list[Sample], size: int, with_masks: bool, workers: int | None, progress=None):
    """Decode and resize every sample; returns images (N,S,S,3) uint8, masks (N,S,S) bool | None,
    and the original (H, W) of each image."""
    if with_masks:
        unlabeled = [s.id for s in samples if s.mask is None]
        if unlabeled:
            raise SamfedError(f"Sample {unlabeled[0]!r} has no mask ({len(unlabeled)} unlabeled samples).")
    n = len(samples)
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), bool) if with_masks else None
    shapes: list[tuple[int, int]] = [(0, 0)] * n

    def load(i: int) -> None:
        s = samples[i]
        if masks is None:
            img = read_image(s.image)
        else:
            img, m = read_pair(s.image, s.mask)
            masks[i] = resize_mask(m, size)
        shapes[i] = img.shape[:2]
        images[i] = resize_image(img, size)

    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        for k, _ in enumerate(pool.map(load, range(n))):
            if progress is not None:
                progress(k)
    return images, masks, shapes


def load_arrays(
    dataset: Dataset | Sequence[Sample],
    ids: Sequence[str] | None,
    size: int,
    with_masks: bool = True,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode `ids` (all samples if None) resized to `size`: images (N,S,S,3) uint8 and masks
    (N,S,S) bool, or None with `with_masks=False`. Decoding runs on a thread pool."""
    images, masks, _ = _load_all(_samples(dataset, ids), size, with_masks, workers)
    return images, masks


class SegDataset(torch.utils.data.Dataset):
    """Item -> dict(image=(3,S,S) float32 normalised, mask=(1,S,S) float32 (if with_masks), id, index).

    All images are decoded once at construction and kept as resized uint8 arrays (`images`
    (N,S,S,3), `masks` (N,S,S) bool or None); `original_sizes` holds each image's (H, W).
    `transform` runs on the uint8 arrays of one item before normalisation (augmentation).
    """

    def __init__(
        self,
        dataset_or_samples: Dataset | Sequence[Sample],
        ids: Sequence[str] | None = None,
        prep: Preprocessing | None = None,
        with_masks: bool = True,
        transform: Transform | None = None,
        workers: int | None = None,
    ) -> None:
        self.prep = prep or Preprocessing()
        samples = _samples(dataset_or_samples, ids)
        self.ids = [s.id for s in samples]
        self.samples = samples
        self.with_masks = with_masks
        self.transform = transform
        self.images, self.masks, self.original_sizes = _load_all(samples, self.prep.size, with_masks, workers)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        image = self.images[index]
        mask = self.masks[index] if self.masks is not None else None
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        item = {"image": torch.from_numpy(normalize(image, self.prep)), "id": self.ids[index], "index": index}
        if mask is not None:
            item["mask"] = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)[None])
        return item
