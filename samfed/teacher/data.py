"""Labeled images for teacher fine-tuning: the server's labeled set and an early-stopping holdout."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from samfed.data.readers import Dataset
from samfed.errors import SamfedError
from samfed.teacher.transforms import TeacherInput


def holdout(ids: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split `ids` into (train, val) with round(fraction * n) val ids (at least 1 when n >= 2)."""
    ids = sorted(ids)
    n_val = round(len(ids) * fraction)
    n_val = max(1, n_val) if len(ids) >= 2 and fraction > 0 else n_val
    order = np.random.default_rng(seed).permutation(len(ids))
    return sorted(ids[j] for j in order[n_val:]), sorted(ids[j] for j in order[:n_val])


def load_pairs(dataset: Dataset, ids: Sequence[str], spec: TeacherInput) -> tuple[list, list]:
    """Images (H, W, 3) uint8 and masks (H, W) bool for `ids`.

    For the stretch convention they are decoded straight at the teacher's input size (the same
    `resize_image` the teacher applies, so inputs are identical and memory stays small); for
    longest-pad backbones at full resolution."""
    from samfed.data.dataset import load_arrays

    if spec.convention == "stretch-unit":
        images, masks = load_arrays(dataset, list(ids), spec.size)
        return list(images), list(masks)
    from samfed.data.io import read_pair

    samples = dataset.select(list(ids))
    unlabeled = [s.id for s in samples if s.mask is None]
    if unlabeled:
        raise SamfedError(f"Sample {unlabeled[0]!r} has no mask; teacher fine-tuning needs labeled images.")
    pairs = [read_pair(s.image, s.mask) for s in samples]
    return [image for image, _ in pairs], [mask for _, mask in pairs]
