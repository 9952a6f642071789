"""Segment a list of image files and write results, overlapping I/O with inference. Torch-free.

Decode + resize and upsample + PNG writing run in a small thread pool (PIL and the inference
runtimes release the GIL), while the main thread feeds batches to the model. A corrupt image is
reported through `on_error` and skipped; the rest are processed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.outputs import Row, mask_png, overlay_png, summarize, write_csv
from edge.predictor import Predictor
from samfed.data.io import IMAGE_EXTS, read_image
from samfed.errors import SamfedError


@dataclass
class PipelineReport:
    """Counts and timings of one `run_files` call (seconds)."""

    processed: int = 0
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


def unique_ids(paths: list[Path]) -> list[str]:
    """File stems, with the extension kept where two files share a stem."""
    stems = [p.stem for p in paths]
    dup = {s for s in stems if stems.count(s) > 1}
    ids = [p.name if p.stem in dup else p.stem for p in paths]
    seen: dict[str, int] = {}
    for i, x in enumerate(ids):  # same name in two folders
        n = seen.get(x, 0)
        seen[x] = n + 1
        if n:
            ids[i] = f"{x}_{n}"
    return ids


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
) -> PipelineReport:
    """Predict every path; write masks/<id>.png (original size), overlays/<id>.png (previews whose
    longest side is at most `overlay_size` px; 0 = original size) and predictions.csv under out_dir."""
    out_dir = Path(out_dir)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    if overlays:
        (out_dir / "overlays").mkdir(exist_ok=True)
    report = PipelineReport()
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
        mask_png(pred.mask, out_dir / "masks" / f"{image_id}.png")
        if overlays:
            overlay_png(img, pred.mask, out_dir / "overlays" / f"{image_id}.png", overlay_size)
        return summarize(image_id, pred.prob, pred.mask)

    rows: list[Row] = []
    writes: deque[Future] = deque()

    def drain(limit: int) -> None:
        while len(writes) > limit:
            row = writes.popleft().result()
            rows.append(row)
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
        items = zip(paths, unique_ids(paths), strict=True)
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
    write_csv(rows, out_dir / "predictions.csv")
    report.wall_s = time.perf_counter() - t0
    report.model_s = predictor.session.model_seconds - model_s0
    return report
