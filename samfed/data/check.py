"""Validate a dataset folder: unpaired files, unreadable images, size mismatches, degenerate masks.

Errors make a folder unusable as it is (corrupt or truncated files, images without masks or masks
without images, mask size different from its image); warnings are legal but suspicious (empty or
all-foreground masks, masks that are not binary, split-file ids with no image).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from samfed.data.io import MASK_THRESHOLD, read_grey, read_image
from samfed.data.readers import Dataset, Sample, load_dataset
from samfed.errors import SamfedError

ERROR, WARNING = "error", "warning"
# A mask with more than this fraction of mid-grey (64..191) pixels is probably not a mask.
NON_BINARY_FRACTION = 0.05


@dataclass(frozen=True)
class Problem:
    severity: str  # 'error' | 'warning'
    kind: str  # e.g. 'corrupt image', 'unpaired image', 'size mismatch', 'empty mask'
    path: str
    message: str


@dataclass
class Report:
    """What `check_dataset` found; `ok` says whether the folder is usable as it is."""

    root: Path
    layout: str
    images: int
    masks: int
    usable: int  # readable samples (pairs when labeled) without errors
    labeled: bool
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors and self.usable > 0

    def counts(self) -> Counter:
        """(severity, kind) -> number of problems."""
        return Counter((p.severity, p.kind) for p in self.problems)

    def summary(self) -> str:
        unit = "usable pairs" if self.labeled else "usable images"
        return f"{self.usable} {unit}, {len(self.errors)} errors, {len(self.warnings)} warnings"


def _check_sample(s: Sample) -> list[Problem]:
    problems = []
    try:
        image = read_image(s.image)
    except SamfedError as exc:
        problems.append(Problem(ERROR, "corrupt image", str(s.image), str(exc)))
        image = None
    if s.mask is None:
        return problems
    try:
        grey = read_grey(s.mask)
    except SamfedError as exc:
        return [*problems, Problem(ERROR, "corrupt mask", str(s.mask), str(exc))]
    if image is not None and grey.shape != image.shape[:2]:
        msg = (
            f"Mask {s.mask.name} is {grey.shape[1]}x{grey.shape[0]} px but image {s.image.name} is "
            f"{image.shape[1]}x{image.shape[0]} px."
        )
        problems.append(Problem(ERROR, "size mismatch", str(s.mask), msg))
    fg = float((grey >= MASK_THRESHOLD).mean())
    if fg == 0:
        problems.append(Problem(WARNING, "empty mask", str(s.mask), f"Mask {s.mask.name} has no foreground."))
    elif fg == 1:
        msg = f"Mask {s.mask.name} is foreground everywhere."
        problems.append(Problem(WARNING, "all-foreground mask", str(s.mask), msg))
    mid = float(((grey >= 64) & (grey < 192)).mean())
    if mid > NON_BINARY_FRACTION:
        msg = f"Mask {s.mask.name} has {mid:.0%} mid-grey pixels; is it really a binary mask?"
        problems.append(Problem(WARNING, "non-binary mask", str(s.mask), msg))
    return problems


def check_dataset(
    path: str | Path | Dataset,
    workers: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Decode every image and mask of the folder and report problems; `progress(done, total)`."""
    ds = path if isinstance(path, Dataset) else load_dataset(path)
    problems: list[Problem] = []
    labeled = ds.labeled
    for p in ds.unpaired_images if labeled else []:
        problems.append(Problem(ERROR, "unpaired image", str(p), f"Image {p.name} has no mask."))
    for p in ds.unpaired_masks:
        problems.append(Problem(ERROR, "unpaired mask", str(p), f"Mask {p.name} has no image."))
    usable = 0
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for k, found in enumerate(pool.map(_check_sample, ds.samples)):
            problems += found
            usable += not any(p.severity == ERROR for p in found)
            if progress is not None:
                progress(k + 1, len(ds.samples))
    for name, ids in ds.unknown_split_ids.items():
        msg = f"{name}.txt lists {len(ids)} ids with no image, e.g. {ids[0]!r}."
        problems.append(Problem(WARNING, "unknown split id", str(ds.root / f"{name}.txt"), msg))
    n_images = len(ds.samples) + (len(ds.unpaired_images) if labeled else 0)
    n_masks = sum(s.mask is not None for s in ds.samples) + len(ds.unpaired_masks)
    return Report(ds.root, ds.layout, n_images, n_masks, usable, labeled, problems)
