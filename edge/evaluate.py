"""Score a deployed model, or any folder of predicted masks, against a labeled folder. Torch-free.

Every image is scored at its original size with `samfed.metrics` (Dice, IoU, HD95 in pixels, the
HD95 convention selectable). `score_export` runs an export through the edge `Predictor` (the same
code path as `samfed predict`); `score_predictions` reads mask files, like nnU-Net's
evaluate_folder. Both return an `Evaluation` that edge.evaluate_out writes to disk.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from samfed.data.io import IMAGE_EXTS, read_mask, read_pair
from samfed.data.readers import Dataset, load_dataset, read_id_list
from samfed.errors import SamfedError
from samfed.metrics import DEFAULT_HD95, HD95_CONVENTIONS, evaluate_pair


@dataclass
class LabeledSet:
    """The labeled samples to score, in order; `source` says where the ids came from."""

    dataset: Dataset
    ids: list[str]
    source: str

    def pair(self, sample_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(image (H, W, 3) uint8, ground truth (H, W) bool) of one id."""
        s = self.dataset[sample_id]
        return read_pair(s.image, s.mask)


@dataclass
class Evaluation:
    """Per-image rows {id, dice, iou, hd95} in id order, the worst cases' predicted masks (lowest
    Dice first) and what was scored (`info`: JSON-able, goes into summary.json)."""

    labeled: LabeledSet
    rows: list[dict]
    worst: list[tuple[dict, np.ndarray]]
    hd95_convention: str
    info: dict = field(default_factory=dict)


def resolve_ids_file(ids_file: Path, data: Path) -> Path:
    """`ids_file` as given, else relative to the dataset folder (`--ids val.txt`)."""
    if ids_file.is_file() or ids_file.is_absolute():
        return ids_file
    return data / ids_file if (data / ids_file).is_file() else ids_file


def open_dataset(data: str | Path) -> Dataset:
    """The labeled folder `data`; SamfedError when it does not exist."""
    data = Path(data)
    if not data.is_dir():
        raise SamfedError(f"Dataset folder {data} does not exist.")
    return load_dataset(data)


def labeled_set(
    ds: Dataset, ids_file: Path | None = None, default_ids: list[str] | None = None
) -> LabeledSet:
    """The samples of `ds` to score: the ids `ids_file` lists, else `default_ids`, else all.

    SamfedError for an unknown id or an id without a ground-truth mask.
    """
    data = ds.root
    if ids_file is not None:
        path = resolve_ids_file(ids_file, data)
        ids, source = read_id_list(path), str(path)
        if not ids:
            raise SamfedError(f"Id file {path} lists no ids.")
    elif default_ids is not None:
        ids, source = default_ids, "the predicted masks"
    else:
        ids, source = ds.ids, "all samples"
    if not ids:
        raise SamfedError(f"No labeled images to score in {data}.")
    unlabeled = [s.id for s in ds.select(ids) if s.mask is None]  # select: SamfedError for unknown ids
    if unlabeled:
        raise SamfedError(
            f"Image {unlabeled[0]!r} in {data} has no ground-truth mask ({len(unlabeled)} of the "
            f"{len(ids)} images have none); evaluation needs a mask for every image."
        )
    return LabeledSet(ds, list(ids), source)


class _Worst:
    """The k rows with the lowest Dice seen so far, with their predicted masks (ties: first seen)."""

    def __init__(self, k: int):
        self.k, self._heap = k, []

    def offer(self, index: int, row: dict, pred: np.ndarray) -> None:
        if self.k <= 0:
            return
        item = (-row["dice"], -index, row, pred)  # max-heap on Dice; a later index leaves first
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, item)
        elif item[:2] > self._heap[0][:2]:
            heapq.heapreplace(self._heap, item)

    def cases(self) -> list[tuple[dict, np.ndarray]]:
        return [(row, pred) for *_, row, pred in sorted(self._heap, key=lambda t: (-t[0], -t[1]))]


def score(
    labeled: LabeledSet,
    preds: Iterable[tuple[str, np.ndarray, np.ndarray]],
    worst: int,
    hd95_convention: str,
    info: dict,
) -> Evaluation:
    """Score (id, predicted mask, ground truth) triples (all (H, W) bool) into an Evaluation."""
    keep, rows = _Worst(worst), []
    for i, (sample_id, pred, gt) in enumerate(preds):
        row = {"id": sample_id, **evaluate_pair(pred, gt, hd95_convention)}
        rows.append(row)
        keep.offer(i, row, pred)
    return Evaluation(labeled, rows, keep.cases(), hd95_convention, info)


def _export_predictions(predictor, labeled: LabeledSet) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    for start in range(0, len(labeled.ids), predictor.batch):
        chunk = labeled.ids[start : start + predictor.batch]
        pairs = [labeled.pair(i) for i in chunk]
        results = predictor.predict([image for image, _ in pairs])
        for sample_id, (_, gt), result in zip(chunk, pairs, results, strict=True):
            yield sample_id, result.mask, gt


def score_export(
    model: str | Path,
    data: str | Path,
    ids_file: Path | None = None,
    *,
    backend: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    batch: int = 8,
    worst: int = 6,
    hd95_convention: str = DEFAULT_HD95,
    trusted_keys: tuple[str, ...] = (),
) -> Evaluation:
    """Predict every labeled image with an export folder (manifest verified) or a bare .onnx/.xml
    file through `edge.predictor.Predictor`, and score it against its ground truth."""
    from edge.predictor import Predictor

    _check_convention(hd95_convention)
    labeled = labeled_set(open_dataset(data), ids_file)
    predictor = Predictor.from_model(model, backend, precision, threads, batch, trusted_keys)
    man = predictor.manifest
    info = {
        "model": str(model),
        "artefact": predictor.artefact,
        "backend": predictor.session.backend,
        "precision": man.artefacts[predictor.artefact].precision if man is not None else None,
        "threshold": predictor.threshold,
        "input_size": predictor.prep.size,
        "signer": man.signer if man is not None else None,
    }
    if man is not None:
        parity = man.data.get("artefacts", {}).get(predictor.artefact, {}).get("parity", {})
        info["manifest_dice_vs_gt"] = parity.get("dice_vs_gt")
        info["manifest_heldout"] = man.data.get("heldout")
    return score(labeled, _export_predictions(predictor, labeled), worst, hd95_convention, info)


def prediction_files(folder: Path) -> dict[str, Path]:
    """{id: mask file} of a predictions folder: `samfed predict` output (its masks/) or any folder
    of mask images; an id is the file's path below that folder without its extension."""
    if not folder.is_dir():
        raise SamfedError(f"Predictions folder {folder} does not exist.")
    root = folder / "masks" if (folder / "masks").is_dir() else folder
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    found: dict[str, Path] = {}
    for p in files:
        key = p.relative_to(root).with_suffix("").as_posix()
        if key in found:
            raise SamfedError(f"{found[key]} and {p} are both predictions for {key!r}; keep one file per id.")
        found[key] = p
    if not found:
        raise SamfedError(f"No mask images ({', '.join(IMAGE_EXTS)}) found in {root}.")
    return found


def _match(files: dict[str, Path], ds: Dataset, strict: bool) -> dict[str, Path]:
    """{dataset id: prediction file}: by id, else by file stem (predict run on a parent folder).
    A prediction of an image not in `ds` is an error when `strict`, else it is left out."""
    out: dict[str, Path] = {}
    for key, path in files.items():
        sample_id = key if key in ds else path.stem
        if sample_id not in ds:
            if not strict:
                continue
            raise SamfedError(f"Prediction {path} has no image with id {sample_id!r} in {ds.root}.")
        if sample_id in out:
            raise SamfedError(f"{out[sample_id]} and {path} are both predictions for {sample_id!r}.")
        out[sample_id] = path
    return out


def _file_predictions(
    labeled: LabeledSet, files: dict[str, Path]
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    for sample_id in labeled.ids:
        _, gt = labeled.pair(sample_id)
        path = files[sample_id]
        pred = read_mask(path)
        if pred.shape != gt.shape:
            raise SamfedError(
                f"Prediction {path} is {pred.shape[1]}x{pred.shape[0]} px but the ground truth of "
                f"{sample_id!r} is {gt.shape[1]}x{gt.shape[0]} px; predictions must be at the image's size."
            )
        yield sample_id, pred, gt


def score_predictions(
    predictions: str | Path,
    data: str | Path,
    ids_file: Path | None = None,
    *,
    worst: int = 6,
    hd95_convention: str = DEFAULT_HD95,
) -> Evaluation:
    """Score the mask files of `predictions` against `data`'s ground truth: every prediction, or
    the ids `ids_file` lists (each needs a prediction). SamfedError for a missing prediction."""
    _check_convention(hd95_convention)
    predictions = Path(predictions)
    files = prediction_files(predictions)
    ds = open_dataset(data)
    matched = _match(files, ds, strict=ids_file is None)
    labeled = labeled_set(ds, ids_file, default_ids=[i for i in ds.ids if i in matched])
    missing = [i for i in labeled.ids if i not in matched]
    if missing:
        raise SamfedError(
            f"No prediction for {missing[0]!r} in {predictions} ({len(missing)} of the {len(labeled.ids)} "
            f"ids from {labeled.source} have none)."
        )
    info = {"predictions": str(predictions)}
    return score(labeled, _file_predictions(labeled, matched), worst, hd95_convention, info)


def _check_convention(convention: str) -> None:
    if convention not in HD95_CONVENTIONS:
        raise SamfedError(
            f"Unknown HD95 convention {convention!r}; expected {' or '.join(HD95_CONVENTIONS)}."
        )
