"""Find image/mask pairs in the dataset layouts users have; torch-free and reads no pixels.

Layouts (auto-detected by `load_dataset`):
- ``kvasir``: ``images/*.jpg`` + ``masks/*.jpg`` with the same stem (Kvasir-SEG).
- ``isic``: ``ISIC2018_Task1-2_Training_Input/ISIC_*.jpg`` +
  ``ISIC2018_Task1_Training_GroundTruth/ISIC_*_segmentation.png`` (ISIC 2018 Task 1); the
  Validation/Test folders are read too when present and become the ``val``/``test`` splits.
- ``generic``: ``images/`` + ``masks/`` with matching stems (any of jpg/jpeg/png/bmp/tif; a mask
  may also be named ``<stem>_mask`` or ``<stem>_segmentation``), or images only: ``images/``
  without ``masks/``, or image files directly in the folder (unlabeled client data).
Optional split files ``train.txt``, ``val.txt``, ``test.txt`` in the root list one id per line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from samfed.data.io import IMAGE_EXTS
from samfed.errors import SamfedError

SPLIT_NAMES = ("train", "val", "test")
ISIC_PARTS = (("Training", "train"), ("Validation", "val"), ("Test", "test"))
MASK_SUFFIXES = ("", "_mask", "_segmentation")


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


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _by_stem(files: list[Path]) -> dict[str, Path]:
    """stem -> file; with duplicate stems (a.jpg, a.png) the first in IMAGE_EXTS order wins."""
    out: dict[str, Path] = {}
    for p in sorted(files, key=lambda p: (p.stem, IMAGE_EXTS.index(p.suffix.lower()))):
        out.setdefault(p.stem, p)
    return out


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


def _read_split_files(root: Path) -> dict[str, list[str]]:
    splits = {}
    for name in SPLIT_NAMES:
        f = root / f"{name}.txt"
        if f.is_file():
            lines = (ln.strip() for ln in f.read_text(encoding="utf-8").splitlines())
            ids = [Path(ln).stem if Path(ln).suffix.lower() in IMAGE_EXTS else ln for ln in lines]
            splits[name] = [i for i in ids if i and not i.startswith("#")]
    return splits


def _load_isic(root: Path):
    samples, unpaired_images, unpaired_masks, splits, labeled = [], [], [], {}, False
    for part, split in ISIC_PARTS:
        inp = root / f"ISIC2018_Task1-2_{part}_Input"
        if not inp.is_dir():
            continue
        images = {p.stem: p for p in _image_files(inp) if p.stem.startswith("ISIC_")}
        gt = root / f"ISIC2018_Task1_{part}_GroundTruth"
        masks = None
        if gt.is_dir():
            labeled = True
            masks = {p.stem.removesuffix("_segmentation"): p for p in _image_files(gt)}
        s, ui, um = _pair(images, masks, suffixes=("",))
        samples += s
        unpaired_images += ui
        unpaired_masks += um
        if part != "Training" and s:
            splits[split] = [x.id for x in s]
    return samples, unpaired_images, unpaired_masks, splits, labeled


def load_dataset(path: str | Path) -> Dataset:
    """Detect the layout of `path` and list its samples; raises SamfedError if none are found."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise SamfedError(f"Dataset folder {root} does not exist or is not a folder.")
    splits: dict[str, list[str]] = {}
    if (root / "ISIC2018_Task1-2_Training_Input").is_dir():
        layout = "isic"
        samples, unpaired_images, unpaired_masks, splits, labeled = _load_isic(root)
    elif (root / "images").is_dir():
        image_files = _image_files(root / "images")
        mask_files = _image_files(root / "masks") if (root / "masks").is_dir() else None
        all_jpg = all(p.suffix.lower() == ".jpg" for p in image_files + (mask_files or []))
        labeled = mask_files is not None
        layout = "kvasir" if labeled and all_jpg else "generic"
        masks = _by_stem(mask_files) if mask_files is not None else None
        samples, unpaired_images, unpaired_masks = _pair(_by_stem(image_files), masks)
    else:
        layout, labeled = "generic", False
        samples, unpaired_images, unpaired_masks = _pair(_by_stem(_image_files(root)), None)
    if not samples and not unpaired_images:
        raise SamfedError(
            f"No images found in {root}: expected images/ (+ masks/), the ISIC 2018 Task 1 folders, "
            f"or image files ({', '.join(IMAGE_EXTS)}) directly in the folder."
        )
    splits.update(_read_split_files(root))
    known = {s.id for s in samples}
    unknown = {k: [i for i in v if i not in known] for k, v in splits.items()}
    splits = {k: [i for i in v if i in known] for k, v in splits.items()}
    return Dataset(
        root=root,
        layout=layout,
        samples=samples,
        splits=splits,
        unpaired_images=unpaired_images,
        unpaired_masks=unpaired_masks,
        unknown_split_ids={k: v for k, v in unknown.items() if v},
        labeled=labeled,
    )
