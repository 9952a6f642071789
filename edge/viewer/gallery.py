"""Gallery mode: the results of a `samfed predict` output folder, read as untrusted input.

Rows come from its predictions.csv (edge.outputs.Row columns); images are served only for ids of
those rows, only as the mask/overlay PNGs predict writes there, and only when the file, symlinks
resolved, lies inside the folder (no path traversal, no symlink out).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from edge.manifest import member_path
from edge.outputs import CSV_HEADER, Row
from edge.predict_out import CSV_NAME
from samfed.errors import SamfedError

MAX_CSV_BYTES = 64 << 20
KINDS = ("overlay", "mask")  # what the gallery serves per row: overlays/<id>.png, masks/<id>.png


@dataclass(frozen=True)
class Gallery:
    """A read predict output folder: `rows` in CSV order; `files[(kind, id)]` the relative names of
    the PNGs that existed when it was opened."""

    root: Path
    rows: tuple[Row, ...]
    files: dict[tuple[str, str], str]

    def to_json(self) -> dict:
        """Rows with which PNGs exist, for the page."""
        return {
            "folder": self.root.name,
            "rows": [asdict(r) | {k: (k, r.id) in self.files for k in KINDS} for r in self.rows],
        }

    def file(self, kind: str, image_id: str) -> Path | None:
        """The PNG of a row, None when the folder has none (or kind/id are not the gallery's); checked
        again on every call, so a file replaced by a symlink out of the folder is refused."""
        rel = self.files.get((kind, image_id))
        return _inside(self.root, rel) if rel is not None else None


def _int(value: str, what: str) -> int:
    n = int(value)
    if n < 0:
        raise ValueError(f"{what} {value!r} is negative")
    return n


def _row(d: dict[str, str]) -> Row:
    """One CSV record -> Row; ValueError names the bad field."""
    w, h, area = (_int(d[k], k) for k in ("width", "height", "area_px"))
    fraction = float(d["area_fraction"])
    conf: float | str = "" if d["mean_confidence"] == "" else float(d["mean_confidence"])
    numbers = [fraction] + ([conf] if isinstance(conf, float) else [])
    if not all(math.isfinite(x) and 0.0 <= x <= 1.0 for x in numbers) or w * h == 0 or area > w * h:
        raise ValueError(f"the values of {d['id']!r} are out of range")
    return Row(d["id"], w, h, area, fraction, conf)


def _inside(root: Path, rel: str) -> Path | None:
    """`root/rel` when it is a regular file inside `root` after resolving symlinks, else None."""
    try:
        path = member_path(root, rel, "gallery file")
    except ValueError:
        return None
    return path if path.is_file() else None


def read_rows(root: Path) -> list[Row]:
    """The rows of root/predictions.csv; SamfedError when it is missing, too large or malformed."""
    path = root / CSV_NAME
    if _inside(root, CSV_NAME) is None:
        raise SamfedError(
            f"{root} has no {CSV_NAME} inside it: pass a folder written by `samfed predict --out`."
        )
    try:
        if path.stat().st_size > MAX_CSV_BYTES:
            raise SamfedError(f"{path} is larger than {MAX_CSV_BYTES >> 20} MB; it is not a predict output.")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SamfedError(f"Cannot read {path} ({exc}).") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames != CSV_HEADER:
        raise SamfedError(f"{path} has columns {reader.fieldnames}, expected {CSV_HEADER} (samfed predict).")
    rows, seen = [], set()
    for n, record in enumerate(reader, start=2):
        try:
            if None in record or record["id"] in seen:
                raise ValueError("extra columns or a repeated id")
            member_path(root, f"masks/{record['id']}.png", "image id")
            rows.append(_row(record))
        except (ValueError, TypeError) as exc:
            raise SamfedError(f"{path} line {n} is not a samfed predict row ({exc}).") from None
        seen.add(record["id"])
    return rows


def open_gallery(folder: str | Path) -> Gallery:
    """Read a `samfed predict` output folder; SamfedError when it is not one."""
    root = Path(folder)
    if not root.is_dir():
        raise SamfedError(f"--folder {root} is not a folder; pass the --out folder of `samfed predict`.")
    rows = read_rows(root)
    files = {}
    for r in rows:
        for kind, sub in (("overlay", "overlays"), ("mask", "masks")):
            rel = f"{sub}/{r.id}.png"
            if _inside(root, rel) is not None:
                files[(kind, r.id)] = rel
    return Gallery(root, tuple(rows), files)
