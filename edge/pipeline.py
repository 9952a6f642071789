"""Segment a list of image files and write results, overlapping I/O with inference. Torch-free.

Decode + resize and upsample + PNG writing run in a small thread pool (PIL and the inference
runtimes release the GIL), while the main thread feeds batches to the model. A corrupt image is
reported through `on_error` and skipped; the rest are processed.
"""

from __future__ import annotations

import os
import posixpath
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.manifest import MANIFEST_NAME
from edge.outputs import Row, mask_png, overlay_png, summarize
from edge.predict_out import Mode, OutputFolder, open_output
from edge.predictor import Predictor
from samfed.data.io import IMAGE_EXTS, read_image
from samfed.errors import SamfedError
from samfed.fileio import sha256_file


@dataclass
class PipelineReport:
    """Counts and timings of one `run_files` call (seconds)."""

    processed: int = 0
    resumed: int = 0  # finished by an earlier, interrupted run and kept
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, one-line reason)
    wall_s: float = 0.0
    model_s: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.processed / self.wall_s if self.wall_s else 0.0

    @property
    def overhead_ratio(self) -> float:
        """(wall - model) / model: time not spent inside the model, relative to model time."""
        return (self.wall_s - self.model_s) / self.model_s if self.model_s else float("inf")

    def to_dict(self) -> dict:
        return {
            "processed": self.processed,
            "resumed": self.resumed,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "wall_s": round(self.wall_s, 4),
            "model_s": round(self.model_s, 4),
            "images_per_s": round(self.images_per_s, 3),
            "overhead_ratio": round(self.overhead_ratio, 3),
        }


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders (non-recursive, image extensions only) into a sorted, de-duplicated list."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS))
        elif p.is_file():
            out.append(p)
        else:
            raise SamfedError(f"Input {p} is neither an image file nor a folder.")
    seen: set[Path] = set()
    return [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]


def output_ids(paths: list[Path]) -> list[str]:
    """Unique output names: each path relative to the images' common folder, without its extension
    unless two images in one folder share a stem (a/x.jpg + b/x.jpg -> a/x, b/x; x.jpg + x.png kept)."""
    if not paths:
        return []
    absolute = [Path(os.path.abspath(p)) for p in paths]
    try:
        base = Path(os.path.commonpath([p.parent for p in absolute]))
    except ValueError:  # different drives
        raise SamfedError(
            "Images on different drives cannot share one --out folder; predict them separately."
        ) from None
    rel = [p.relative_to(base).as_posix() for p in absolute]
    stems = [posixpath.splitext(r)[0] for r in rel]
    counts = Counter(stems)
    ids = [r if counts[st] > 1 else st for r, st in zip(rel, stems, strict=True)]
    return ids if len(set(ids)) == len(ids) else rel


def predict_settings(predictor: Predictor, overlays: bool, overlay_size: int) -> dict:
    """What makes two predict runs' outputs comparable (a resumed run must match the earlier one)."""
    man = predictor.manifest
    model = man.root / MANIFEST_NAME if man is not None else predictor.session.path
    return {
        "model_sha256": sha256_file(model),
        "artefact": predictor.artefact,
        "backend": predictor.session.backend,
        "preprocessing": predictor.prep.to_dict(),
        "threshold": predictor.threshold,
        "overlays": overlay_size if overlays else None,
    }


def _ordered(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, ahead: int) -> Iterator[Future]:
    """Submit fn(*item) with at most `ahead` pending, yielding futures in input order."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(fn, *item))
        if len(pending) >= ahead:
            yield pending.popleft()
    yield from pending


def run_files(
    predictor: Predictor,
    paths: list[Path],
    out_dir: Path,
    workers: int = 2,
    overlays: bool = True,
    overlay_size: int = 512,
    on_done: Callable[[str], None] | None = None,
    on_error: Callable[[Path, str], None] | None = None,
    mode: Mode = "new",
) -> PipelineReport:
    """Predict every path; write masks/<id>.png (original size), overlays/<id>.png (previews whose
    longest side is at most `overlay_size` px; 0 = original size) and predictions.csv under out_dir.

    The folder must be accepted by edge.predict_out.open_output (`mode`: new, overwrite, resume);
    with `resume`, images an interrupted run finished are kept and counted in `report.resumed`."""
    ids = output_ids(paths)
    settings = predict_settings(predictor, overlays, overlay_size)
    sources = [str(Path(p).resolve()) for p in paths]
    folder = open_output(out_dir, ids, sources, settings, overlays, mode)
    try:
        report, rows = _run(predictor, paths, ids, folder, workers, overlays, overlay_size, on_done, on_error)
    finally:
        folder.close()
    folder.finish([rows[i] for i in ids if i in rows])
    return report


def _run(
    predictor: Predictor,
    paths: list[Path],
    ids: list[str],
    folder: OutputFolder,
    workers: int,
    overlays: bool,
    overlay_size: int,
    on_done: Callable[[str], None] | None,
    on_error: Callable[[Path, str], None] | None,
) -> tuple[PipelineReport, dict[str, Row]]:
    """The threaded loop of run_files; returns (report, {id: Row} of every finished image)."""
    report = PipelineReport(resumed=len(folder.done))
    model_s0 = predictor.session.model_seconds
    t0 = time.perf_counter()

    def load(path: Path, image_id: str):
        try:
            img = read_image(path)
            return image_id, img, predictor.prepare(img)
        except SamfedError as exc:
            return path, str(exc), None

    def write(image_id: str, img: np.ndarray, prob: np.ndarray) -> Row:
        pred = predictor.finish(prob, img.shape[:2])
        target = folder.mask_path(image_id)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            mask_png(pred.mask, target)
            if overlays:
                target = folder.overlay_path(image_id)
                target.parent.mkdir(parents=True, exist_ok=True)
                overlay_png(img, pred.mask, target, overlay_size)
        except OSError as exc:
            raise SamfedError(
                f"Cannot write {target} ({exc.strerror or exc}): choose a writable --out folder."
            ) from None
        return summarize(image_id, pred.prob, pred.mask)

    rows: dict[str, Row] = dict(folder.done)
    writes: deque[Future] = deque()

    def drain(limit: int) -> None:
        while len(writes) > limit:
            row = writes.popleft().result()
            folder.record(row)
            rows[row.id] = row
            report.processed += 1
            if on_done:
                on_done(row.id)

    def flush(batch: list) -> None:
        probs = predictor.probs_resized(np.stack([r for _, _, r in batch]))
        for (image_id, img, _), prob in zip(batch, probs, strict=True):
            writes.append(pool.submit(write, image_id, img, prob))
        drain(2 * predictor.batch)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        batch: list = []
        items = [(p, i) for p, i in zip(paths, ids, strict=True) if i not in folder.done]
        for fut in _ordered(pool, load, items, ahead=2 * predictor.batch):
            key, img, resized = fut.result()
            if resized is None:
                report.skipped.append((str(key), img))
                if on_error:
                    on_error(key, img)
                continue
            batch.append((key, img, resized))
            if len(batch) == predictor.batch:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
        drain(0)
    report.wall_s = time.perf_counter() - t0
    report.model_s = predictor.session.model_seconds - model_s0
    return report, rows
