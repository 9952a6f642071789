"""Find image/mask pairs in the dataset layouts users have; torch-free and reads no pixels.

Layouts (auto-detected by `load_dataset`):
- ``kvasir``: ``images/*.jpg`` + ``masks/*.jpg`` with the same stem (Kvasir-SEG).
- ``isic``: ``ISIC2018_Task1-2_Training_Input/ISIC_*.jpg`` +
  ``ISIC2018_Task1_Training_GroundTruth/ISIC_*_segmentation.png`` (ISIC 2018 Task 1); the
  Validation/Test folders are read too when present and become the ``val``/``test`` splits.
- ``generic``: ``images/`` + ``masks/`` with matching stems (any of jpg/jpeg/png/bmp/tif; a mask
  may also be named ``<stem>_mask`` or ``<stem>_segmentation``), or images only: ``images/``
  without ``masks/``, or image files directly in the folder (unlabeled client data).
Optional split files ``train.txt``, ``val.txt``, ``test.txt`` in the root list one id per line
(UTF-8; they must not overlap).

Nothing is dropped silently: two files with one id (``a.jpg`` + ``a.png``) are ambiguous and an
error; subfolders holding images inside an image or mask folder are not read, and they and
split-file ids without an image are reported with a `DatasetWarning` at load.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from samfed.data.io import IMAGE_EXTS
from samfed.errors import SamfedError

SPLIT_NAMES = ("train", "val", "test")
ISIC_PARTS = (("Training", "train"), ("Validation", "val"), ("Test", "test"))
MASK_SUFFIXES = ("", "_mask", "_segmentation")


class DatasetWarning(UserWarning):
    """A dataset folder holds files that are not used (subfolders, split-file ids without an image)."""


@dataclass(frozen=True)
class Sample:
    """One image and its mask (None for unlabeled images)."""

    id: str
    image: Path
    mask: Path | None = None


@dataclass
class Dataset:
    """A dataset folder: paired samples in id order, split files, and files that did not pair up."""

    root: Path
    layout: str  # 'kvasir' | 'isic' | 'generic'
    samples: list[Sample]
    splits: dict[str, list[str]] = field(default_factory=dict)
    unpaired_images: list[Path] = field(default_factory=list)
    unpaired_masks: list[Path] = field(default_factory=list)
    unknown_split_ids: dict[str, list[str]] = field(default_factory=dict)
    labeled: bool = True  # the layout has a mask folder (images without masks are then unpaired)
    ambiguous: list[list[Path]] = field(default_factory=list)  # files sharing one id; none of them used
    ignored_dirs: list[tuple[Path, int]] = field(default_factory=list)  # (subfolder, images under it)

    def __post_init__(self) -> None:
        self._by_id = {s.id: s for s in self.samples}

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    @property
    def has_masks(self) -> bool:
        """True when every sample has a mask (a labeled dataset)."""
        return bool(self.samples) and all(s.mask is not None for s in self.samples)

    def __getitem__(self, sample_id: str) -> Sample:
        try:
            return self._by_id[sample_id]
        except KeyError:
            raise SamfedError(f"Id {sample_id!r} is not in the dataset at {self.root}.") from None

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._by_id

    def select(self, ids: list[str]) -> list[Sample]:
        """The samples for `ids`, in that order."""
        return [self[i] for i in ids]

    def ambiguity(self) -> str | None:
        """The sentence describing files that share one id, or None when there are none."""
        if not self.ambiguous:
            return None
        first = self.ambiguous[0]
        more = f" ({len(self.ambiguous) - 1} more ids are ambiguous)" if len(self.ambiguous) > 1 else ""
        return (
            f"{' and '.join(str(p) for p in first)} have the same id {_id_of(first[0])!r}{more}; "
            "keep one file per id."
        )

    def notices(self) -> list[str]:
        """One sentence per kind of unused file: ignored subfolders, split-file ids without an image."""
        out = []
        for folder, n in self.ignored_dirs:
            out.append(
                f"Subfolder {folder} ({n} images) is not read: only files directly in {folder.parent} are."
            )
        for name, ids in self.unknown_split_ids.items():
            out.append(f"{name}.txt lists {len(ids)} ids with no image, e.g. {ids[0]!r}; they are ignored.")
        return out


def _id_of(path: Path) -> str:
    """The sample id a file stands for: its stem without a mask suffix."""
    stem = path.stem
    for suffix in ("_segmentation", "_mask"):
        stem = stem.removesuffix(suffix)
    return stem


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _ignored_dirs(folder: Path) -> list[tuple[Path, int]]:
    """(subfolder, number of image files under it) for each subfolder of `folder` holding images."""
    out = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        n = sum(1 for f in d.rglob("*") if f.suffix.lower() in IMAGE_EXTS and f.is_file())
        if n:
            out.append((d, n))
    return out


def _by_stem(files: list[Path], key=lambda p: p.stem) -> tuple[dict[str, Path], list[list[Path]]]:
    """key -> file, and the groups of files sharing a key (a.jpg + a.png), which are left out."""
    groups: dict[str, list[Path]] = {}
    for p in sorted(files):
        groups.setdefault(key(p), []).append(p)
    unique = {k: g[0] for k, g in groups.items() if len(g) == 1}
    return unique, [g for g in groups.values() if len(g) > 1]


def _pair(images: dict[str, Path], masks: dict[str, Path] | None, suffixes=MASK_SUFFIXES):
    """Pair images with masks by stem (+ optional mask suffix); returns samples and leftovers."""
    if masks is None:
        return [Sample(i, p) for i, p in sorted(images.items())], [], []
    samples, unpaired_images, used = [], [], set()
    for sid, img in sorted(images.items()):
        key = next((sid + s for s in suffixes if sid + s in masks), None)
        if key is None:
            unpaired_images.append(img)
        else:
            used.add(key)
            samples.append(Sample(sid, img, masks[key]))
    unpaired_masks = [p for k, p in sorted(masks.items()) if k not in used]
    return samples, unpaired_images, unpaired_masks


def read_id_list(path: str | Path) -> list[str]:
    """The ids a text file lists, one per line (UTF-8; blank lines and ``#`` comments skipped; an
    image file name stands for its stem). Raises SamfedError for a file that is not UTF-8 text or
    lists an id twice."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise SamfedError(f"Id file {path} does not exist.") from None
    except UnicodeDecodeError as exc:
        raise SamfedError(
            f"Id file {path} is not UTF-8 text (invalid byte at offset {exc.start}); "
            "expected one id per line."
        ) from None
    except OSError as exc:
        raise SamfedError(f"Cannot read id file {path} ({exc.strerror or exc}).") from None
    if "\x00" in text:
        raise SamfedError(f"Id file {path} is binary, not text; expected one id per line.")
    ids = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            ids.append(Path(line).stem if Path(line).suffix.lower() in IMAGE_EXTS else line)
    twice = [i for i, k in Counter(ids).items() if k > 1]
    if twice:
        raise SamfedError(f"Id file {path} lists {twice[0]!r} more than once; list each id once.")
    return ids


def _read_split_files(root: Path) -> dict[str, list[str]]:
    """name -> ids of each train/val/test.txt in `root`; raises SamfedError when two of them share an id."""
    splits = {
        name: read_id_list(root / f"{name}.txt") for name in SPLIT_NAMES if (root / f"{name}.txt").is_file()
    }
    names = list(splits)
    for k, a in enumerate(names):
        for b in names[k + 1 :]:
            shared = sorted(set(splits[a]) & set(splits[b]))
            if shared:
                raise SamfedError(
                    f"{a}.txt and {b}.txt in {root} both list {shared[0]!r} ({len(shared)} shared ids); "
                    "split files must not overlap."
                )
    return splits


@dataclass
class _Found:
    """What the folders of one layout hold."""

    samples: list[Sample] = field(default_factory=list)
    unpaired_images: list[Path] = field(default_factory=list)
    unpaired_masks: list[Path] = field(default_factory=list)
    splits: dict[str, list[str]] = field(default_factory=dict)
    labeled: bool = False
    ambiguous: list[list[Path]] = field(default_factory=list)
    ignored_dirs: list[tuple[Path, int]] = field(default_factory=list)

    def scan(self, folder: Path, key=lambda p: p.stem, keep=lambda p: True) -> dict[str, Path]:
        """id -> image file of `folder` (ambiguous and ignored files recorded)."""
        files, ambiguous = _by_stem([p for p in _image_files(folder) if keep(p)], key)
        self.ambiguous += ambiguous
        self.ignored_dirs += _ignored_dirs(folder)
        return files

    def add(
        self, images: dict[str, Path], masks: dict[str, Path] | None, suffixes=MASK_SUFFIXES
    ) -> list[Sample]:
        s, ui, um = _pair(images, masks, suffixes)
        self.samples += s
        self.unpaired_images += ui
        self.unpaired_masks += um
        return s


def _load_isic(root: Path) -> _Found:
    found = _Found()
    for part, split in ISIC_PARTS:
        inp = root / f"ISIC2018_Task1-2_{part}_Input"
        if not inp.is_dir():
            continue
        images = found.scan(inp, keep=lambda p: p.stem.startswith("ISIC_"))
        gt = root / f"ISIC2018_Task1_{part}_GroundTruth"
        masks = None
        if gt.is_dir():
            found.labeled = True
            masks = found.scan(gt, key=lambda p: p.stem.removesuffix("_segmentation"))
        s = found.add(images, masks, suffixes=("",))
        if part != "Training" and s:
            found.splits[split] = [x.id for x in s]
    return found


def _load_folders(root: Path) -> tuple[str, _Found]:
    """(layout, found) for the images/ (+ masks/) and the images-in-the-folder layouts."""
    found = _Found()
    if not (root / "images").is_dir():
        found.add(found.scan(root), None)
        return "generic", found
    images = found.scan(root / "images")
    found.labeled = (root / "masks").is_dir()
    masks = found.scan(root / "masks") if found.labeled else None
    all_files = [*images.values(), *(masks or {}).values(), *(p for g in found.ambiguous for p in g)]
    all_jpg = all(p.suffix.lower() == ".jpg" for p in all_files)
    found.add(images, masks)
    return ("kvasir" if found.labeled and all_jpg else "generic"), found


def _duplicate_ids(samples: list[Sample]) -> list[list[Path]]:
    """Groups of images of different folders (ISIC parts) that share one id."""
    by_id: dict[str, list[Path]] = {}
    for s in samples:
        by_id.setdefault(s.id, []).append(s.image)
    return [g for g in by_id.values() if len(g) > 1]


def load_dataset(path: str | Path, lenient: bool = False) -> Dataset:
    """Detect the layout of `path` and list its samples.

    Raises SamfedError if no images are found, a split file is invalid, or (unless `lenient`)
    files are ambiguous (two files with one id); warns (`DatasetWarning`, unless `lenient`) about
    ignored subfolders and split-file ids without an image. `lenient` is for `data check`, which
    reports all of these itself.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise SamfedError(f"Dataset folder {root} does not exist or is not a folder.")
    if (root / "ISIC2018_Task1-2_Training_Input").is_dir():
        layout, found = "isic", _load_isic(root)
        found.ambiguous += _duplicate_ids(found.samples)
        left_out = {p for g in found.ambiguous for p in g}
        found.samples = [s for s in found.samples if s.image not in left_out]
        kept = {s.id for s in found.samples}
        found.splits = {k: [i for i in v if i in kept] for k, v in found.splits.items()}
    else:
        layout, found = _load_folders(root)
    samples, splits = found.samples, found.splits
    if not samples and not found.unpaired_images and not found.ambiguous:
        nested = (
            f" (subfolders such as {found.ignored_dirs[0][0].name}/ are not read)"
            if found.ignored_dirs
            else ""
        )
        raise SamfedError(
            f"No images found in {root}{nested}: expected images/ (+ masks/), the ISIC 2018 Task 1 "
            f"folders, or image files ({', '.join(IMAGE_EXTS)}) directly in the folder."
        )
    ambiguous_ids = {_id_of(g[0]) for g in found.ambiguous}
    found.unpaired_images = [p for p in found.unpaired_images if _id_of(p) not in ambiguous_ids]
    found.unpaired_masks = [p for p in found.unpaired_masks if _id_of(p) not in ambiguous_ids]
    splits.update(_read_split_files(root))
    known = {s.id for s in samples}
    unknown = {k: [i for i in v if i not in known] for k, v in splits.items()}
    splits = {k: [i for i in v if i in known] for k, v in splits.items()}
    ds = Dataset(
        root=root,
        layout=layout,
        samples=samples,
        splits=splits,
        unpaired_images=found.unpaired_images,
        unpaired_masks=found.unpaired_masks,
        unknown_split_ids={k: v for k, v in unknown.items() if v},
        labeled=found.labeled,
        ambiguous=found.ambiguous,
        ignored_dirs=found.ignored_dirs,
    )
    if not lenient:
        if ds.ambiguity() is not None:
            raise SamfedError(ds.ambiguity())
        for notice in ds.notices():
            warnings.warn(notice, DatasetWarning, stacklevel=2)
    return ds
