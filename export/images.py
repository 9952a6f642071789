"""Calibration and held-out images for an export: from the run's data, or from a user folder.

Calibration images must be in-distribution (the run's training ids); held-out images (val, else
test) are never used for calibration and serve the parity check. Torch-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from samfed.data.io import read_image, read_pair
from samfed.data.partition import Split
from samfed.data.readers import Dataset, Sample, load_dataset
from samfed.errors import SamfedError
from samfed.preprocess import Preprocessing, to_input


@dataclass
class ImageSet:
    """Preprocessed inputs (N, 3, S, S) float32, ids, and (H, W) bool ground truths when known."""

    ids: list[str]
    x: np.ndarray
    masks: list[np.ndarray] | None
    source: str

    def describe(self) -> dict:
        return {"n": len(self.ids), "source": self.source, "has_masks": self.masks is not None}


def _spread(ids: list[str], n: int) -> list[str]:
    """Up to n ids spread evenly over the list (deterministic)."""
    if len(ids) <= n:
        return list(ids)
    return [ids[i] for i in np.linspace(0, len(ids) - 1, n).round().astype(int)]


def load_images(samples: list[Sample], prep: Preprocessing, source: str, with_masks: bool = True) -> ImageSet:
    """Read and preprocess samples; masks are kept only when every sample has one."""
    has = with_masks and all(s.mask is not None for s in samples)
    if has:
        pairs = [read_pair(s.image, s.mask) for s in samples]
        images, masks = [image for image, _ in pairs], [mask for _, mask in pairs]
    else:
        images, masks = [read_image(s.image) for s in samples], None
    x = np.stack([to_input(image, prep) for image in images])
    return ImageSet([s.id for s in samples], x, masks, source)


def split_ids(ds: Dataset, split: dict | None) -> tuple[list[str], list[str]]:
    """(calibration ids, held-out ids) from a run split, the dataset's split files, or a 80/20 split."""
    if split:
        calib = list(split.get("server_labeled", [])) + [i for c in split.get("clients", []) for i in c]
        held = list(split.get("val") or split.get("test") or [])
        if calib and held:
            return calib, held
    if ds.splits.get("train") and (ds.splits.get("val") or ds.splits.get("test")):
        return ds.splits["train"], ds.splits.get("val") or ds.splits["test"]
    ids = ds.ids
    if len(ids) < 2:
        raise SamfedError(f"{ds.root} has {len(ids)} image(s); calibration and parity need at least 2.")
    rng = np.random.default_rng(0)
    order = [ids[i] for i in rng.permutation(len(ids))]
    n_held = max(1, len(ids) // 5)
    return sorted(order[n_held:]), sorted(order[:n_held])


def _run_data(meta: dict, run_dir: Path | None) -> tuple[Path, dict | None] | None:
    """The dataset folder and split a run recorded (student.json, else run_dir/config.json)."""
    base = run_dir or Path(meta["dir"])
    cfg: dict = {}
    if run_dir is not None and (run_dir / "config.json").is_file():
        try:
            cfg = json.loads((run_dir / "config.json").read_text())
        except ValueError:
            cfg = {}
    data = meta.get("data_path") or cfg.get("data_path") or cfg.get("data")
    if not isinstance(data, str):
        return None
    path = Path(data) if Path(data).is_absolute() else base / data
    if not path.is_dir():
        return None
    split = meta.get("split")
    if isinstance(split, str):
        split = base / split
    elif split is None and run_dir is not None and (run_dir / "split.json").is_file():
        split = run_dir / "split.json"
    if isinstance(split, Path):
        split = Split.load(split).to_dict() if split.is_file() else None
    return path, split if isinstance(split, dict) else None


def export_images(
    meta: dict,
    run_dir: Path | None,
    prep: Preprocessing,
    calib_folder: Path | None = None,
    n_calib: int = 64,
    n_heldout: int = 32,
) -> tuple[ImageSet, ImageSet]:
    """(calibration, held-out) image sets for an export; raises SamfedError when none can be found."""
    split = None
    if calib_folder is not None:
        root = Path(calib_folder)
    else:
        found = _run_data(meta, run_dir)
        if found is None:
            raise SamfedError(
                "The checkpoint does not record a dataset that exists here; pass --calib FOLDER with "
                "in-distribution images for calibration and the parity check."
            )
        root, split = found
    ds = load_dataset(root)
    if not ds.samples:
        raise SamfedError(f"No usable images in {root} for calibration.")
    calib_ids, held_ids = split_ids(ds, split)
    calib_ids = _spread([i for i in calib_ids if i in ds], n_calib)
    held_ids = _spread([i for i in held_ids if i in ds], n_heldout)
    if not calib_ids or not held_ids:
        raise SamfedError(f"Could not pick calibration and held-out images from {root}.")
    calib = load_images(ds.select(calib_ids), prep, f"{root} (calibration ids)", with_masks=False)
    held = load_images(ds.select(held_ids), prep, f"{root} (held-out ids)")
    return calib, held
