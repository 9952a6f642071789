"""Teacher maps of a dataset's images, decoded while the teacher runs; torch-free.

`dataset_teacher_maps` is `samfed.teacher.cache.teacher_maps` over dataset ids: images are decoded
on a thread pool one batch ahead of inference (`edge.teacher_runtime.stream_teacher_maps`), exactly
as the in-process runner decodes them for the teacher (so the cache entries are the same).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from samfed.teacher.transforms import TeacherInput


def image_loader(dataset, ids: Sequence[str], spec: TeacherInput) -> Callable[[int], np.ndarray]:
    """i -> image of ids[i] as the teacher sees it: (S, S, 3) uint8 stretched to its input size for
    the stretch convention (`samfed.preprocess.resize_image`), else the full-resolution image."""
    from samfed.data.io import read_image
    from samfed.preprocess import resize_image

    samples = dataset.select(list(ids))

    def load(i: int) -> np.ndarray:
        image = read_image(samples[i].image)
        return resize_image(image, spec.size) if spec.convention == "stretch-unit" else image

    return load


def dataset_teacher_maps(
    teacher,
    dataset,
    ids: Sequence[str],
    cache,
    out_size: int,
    prompt_masks: Sequence[np.ndarray] | None = None,
    batch_size: int = 8,
    workers: int = 2,
) -> np.ndarray:
    """Teacher probabilities (N, out_size, out_size) float32 of `ids` (cached per image in `cache`,
    a `TeacherMapCache` or None); prompt_masks: (N, h, w) bool for a ``global-box`` teacher."""
    from edge.teacher_runtime import stream_teacher_maps

    load = image_loader(dataset, ids, teacher.input)
    return stream_teacher_maps(teacher, load, len(ids), cache, out_size, prompt_masks, batch_size, workers)
