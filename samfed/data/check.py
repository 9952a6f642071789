"""Validate a dataset folder: unpaired files, unreadable images, size mismatches, degenerate masks.

Errors make a folder unusable as it is (corrupt or truncated files, images without masks or masks
without images, mask size different from its image, masks that are neither 0/1 nor 0/255-like,
two files with one id); warnings are legal but suspicious (empty or all-foreground masks,
split-file ids with no image, subfolders that are not read).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from samfed.data.io import MaskValueError, read_image, read_mask, size_mismatch
from samfed.data.readers import Dataset, Sample, load_dataset
from samfed.errors import SamfedError

ERROR, WARNING = "error", "warning"


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
        mask = read_mask(s.mask)
    except MaskValueError as exc:
        return [*problems, Problem(ERROR, "non-binary mask", str(s.mask), str(exc))]
    except SamfedError as exc:
        return [*problems, Problem(ERROR, "corrupt mask", str(s.mask), str(exc))]
    mismatch = None if image is None else size_mismatch(image.shape, mask.shape, s.image, s.mask)
    if mismatch is not None:
        problems.append(Problem(ERROR, "size mismatch", str(s.mask), mismatch))
    fg = float(mask.mean())
    if fg == 0:
        problems.append(Problem(WARNING, "empty mask", str(s.mask), f"Mask {s.mask.name} has no foreground."))
    elif fg == 1:
        msg = f"Mask {s.mask.name} is foreground everywhere."
        problems.append(Problem(WARNING, "all-foreground mask", str(s.mask), msg))
    return problems


def _folder_problems(ds: Dataset) -> list[Problem]:
    """Problems of the folder as a whole: unpaired and ambiguous files, unused subfolders and ids."""
    problems = []
    for p in ds.unpaired_images if ds.labeled else []:
        problems.append(Problem(ERROR, "unpaired image", str(p), f"Image {p.name} has no mask."))
    for p in ds.unpaired_masks:
        problems.append(Problem(ERROR, "unpaired mask", str(p), f"Mask {p.name} has no image."))
    for group in ds.ambiguous:
        names = " and ".join(p.name for p in group)
        msg = f"{names} in {group[0].parent} have the same id; keep one file per id."
        problems.append(Problem(ERROR, "ambiguous id", str(group[0]), msg))
    for folder, n in ds.ignored_dirs:
        msg = f"Subfolder {folder.name}/ holds {n} images that are not read (subfolders are not searched)."
        problems.append(Problem(WARNING, "ignored subfolder", str(folder), msg))
    for name, ids in ds.unknown_split_ids.items():
        msg = f"{name}.txt lists {len(ids)} ids with no image, e.g. {ids[0]!r}."
        problems.append(Problem(WARNING, "unknown split id", str(ds.root / f"{name}.txt"), msg))
    return problems


def check_dataset(
    path: str | Path | Dataset,
    workers: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Decode every image and mask of the folder and report problems; `progress(done, total)`."""
    ds = path if isinstance(path, Dataset) else load_dataset(path, lenient=True)
    problems = _folder_problems(ds)
    labeled = ds.labeled
    usable = 0
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for k, found in enumerate(pool.map(_check_sample, ds.samples)):
            problems += found
            usable += not any(p.severity == ERROR for p in found)
            if progress is not None:
                progress(k + 1, len(ds.samples))
    n_images = len(ds.samples) + (len(ds.unpaired_images) if labeled else 0)
    n_masks = sum(s.mask is not None for s in ds.samples) + len(ds.unpaired_masks)
    return Report(ds.root, ds.layout, n_images, n_masks, usable, labeled, problems)
