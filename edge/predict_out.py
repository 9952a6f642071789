"""The output folder of `samfed predict`: it never replaces a file predict did not write. Torch-free.

Layout (`<id>` is the image's path relative to the images' common folder, edge.pipeline.output_ids)::

    predict_run.json      record, written first: settings + every planned (id, source image)
    predict_rows.jsonl    one CSV row (JSON) per finished image, appended after its PNGs are written
    masks/<id>.png        binary mask at the original size
    overlays/<id>.png     preview (optional)
    predictions.csv       all rows in input order, written at the end
    predict_summary.json  counts and timings

A folder is accepted when it is new or empty, or when it holds a record (an earlier predict run):
then `overwrite` first deletes exactly the files that record names, and `resume` keeps the
finished images of an interrupted run with the same model, settings and images. Everything else
in the folder is left as it is, and a file predict would write but did not is refused.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Literal

from edge.outputs import Row, write_csv
from samfed.errors import SamfedError
from samfed.fileio import atomic_write_text

RECORD_NAME = "predict_run.json"
JOURNAL_NAME = "predict_rows.jsonl"
CSV_NAME = "predictions.csv"
SUMMARY_NAME = "predict_summary.json"
RECORD_FORMAT = "samfed-predict/1"
Mode = Literal["new", "overwrite", "resume"]


def _write_error(path: Path, exc: OSError) -> SamfedError:
    return SamfedError(f"Cannot write {path} ({exc.strerror or exc}): choose a writable --out folder.")


def _safe_id(value: object) -> str:
    """An image id from a record: a relative POSIX path without `..`; ValueError otherwise."""
    p = PurePosixPath(value) if isinstance(value, str) else None
    if p is None or not value or p.is_absolute() or ".." in p.parts or "\\" in value or "\x00" in value:
        raise ValueError(f"image id {value!r} is not a relative path")
    return value


@dataclass
class OutputFolder:
    """An accepted output folder. `done`: rows of images an interrupted run already finished."""

    root: Path
    ids: list[str]
    overlays: bool
    done: dict[str, Row] = field(default_factory=dict)
    _journal: IO[str] | None = None

    def mask_path(self, image_id: str) -> Path:
        return self.root / "masks" / f"{image_id}.png"

    def overlay_path(self, image_id: str) -> Path:
        return self.root / "overlays" / f"{image_id}.png"

    def record(self, row: Row) -> None:
        """Append a finished image's row to the journal (after its PNGs are written)."""
        try:
            if self._journal is None:
                self._journal = open(self.root / JOURNAL_NAME, "a", encoding="utf-8")  # noqa: SIM115
            self._journal.write(json.dumps(asdict(row)) + "\n")
            self._journal.flush()
        except OSError as exc:
            raise _write_error(self.root / JOURNAL_NAME, exc) from None

    def finish(self, rows: list[Row]) -> None:
        """Close the journal and write predictions.csv (rows in input order)."""
        self.close()
        try:
            write_csv(rows, self.root / CSV_NAME)
        except OSError as exc:
            raise _write_error(self.root / CSV_NAME, exc) from None

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None


def own_files(root: Path, ids: list[str]) -> list[Path]:
    """Every file a predict run over `ids` may write under `root`."""
    names = [RECORD_NAME, JOURNAL_NAME, CSV_NAME, SUMMARY_NAME]
    per_image = [f"{sub}/{i}.png" for i in ids for sub in ("masks", "overlays")]
    return [root / n for n in (*names, *per_image)]


def _read_record(root: Path) -> tuple[dict, list[str], list[str]]:
    """(settings, ids, sources) of the record in `root`; SamfedError when it is not valid."""
    path = root / RECORD_NAME
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rec, dict) or rec.get("format") != RECORD_FORMAT:
            raise ValueError("not a predict record")
        images = rec["images"]
        ids = [_safe_id(im["id"]) for im in images]
        sources = [str(im["source"]) for im in images]
        settings = rec["settings"]
        if not isinstance(settings, dict):
            raise ValueError("settings is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SamfedError(
            f"{path} is not a valid samfed predict record ({exc}); move it away or choose another --out."
        ) from None
    return settings, ids, sources


def _row(line: str) -> Row | None:
    """A journal line -> Row, None when it is torn or not a row."""
    try:
        row = Row(**json.loads(line))
    except (ValueError, TypeError):
        return None
    ints = (row.width, row.height, row.area_px)
    ok = isinstance(row.id, str) and all(isinstance(v, int) and not isinstance(v, bool) for v in ints)
    ok = (
        ok
        and isinstance(row.area_fraction, float | int)
        and isinstance(row.mean_confidence, float | int | str)
    )
    return row if ok else None


def _journal_rows(root: Path, ids: list[str], overlays: bool) -> dict[str, Row]:
    """Rows of finished images: valid journal lines (a torn last line is dropped) whose PNGs exist."""
    try:
        lines = (root / JOURNAL_NAME).read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return {}
    wanted, done = set(ids), {}
    for line in lines:
        row = _row(line)
        if row is None or row.id not in wanted:
            continue
        pngs = [root / "masks" / f"{row.id}.png"] + (
            [root / "overlays" / f"{row.id}.png"] if overlays else []
        )
        if all(p.is_file() for p in pngs):
            done[row.id] = row
    return done


def _delete(root: Path, paths: list[Path]) -> None:
    """Remove `paths` (missing ones ignored) and the folders under masks/ and overlays/ they leave empty."""
    for p in paths:
        p.unlink(missing_ok=True)
        parent = p.parent
        while parent != root and parent.parent != root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()  # a sub-folder of masks/ or overlays/ that only held predict's files
            parent = parent.parent


def _leaves(path: Path, inside: Path) -> bool:
    """Whether `path`, symlinks resolved, is outside the folder `inside` (or cannot be resolved)."""
    try:
        return not path.resolve().is_relative_to(inside)
    except (OSError, RuntimeError):  # symlink loop
        return True


def _refuse_foreign(root: Path, targets: list[Path], own: set[Path], sources: list[str]) -> None:
    """SamfedError if predict would write a file it did not write, write or delete through a
    symlink that leaves `root`, or delete an input image."""
    inside = root.resolve()
    for t in [*targets, *own]:
        if _leaves(t, inside):
            raise SamfedError(
                f"{t} leads outside the output folder {root} (a symlink); choose another --out."
            )
    for t in targets:
        if t not in own and (t.exists() or t.is_symlink()):
            raise SamfedError(f"{t} exists and was not written by samfed predict; choose another --out.")
    resolved = {p.resolve() for p in own}
    for s in sources:
        if Path(s).resolve() in resolved:
            raise SamfedError(f"Input image {s} is an output of the earlier predict run in {root}.")


def check_output(root: Path, mode: Mode) -> tuple[dict, list[str], list[str]] | None:
    """The cheap checks of open_output, without writing: SamfedError unless `root` is new, empty
    or an earlier predict output that `mode` may replace or resume. Returns that earlier run's
    (settings, ids, sources), or None."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise SamfedError(f"Output {root} exists and is not a folder; choose a folder for --out.")
    if not (root / RECORD_NAME).is_file():
        if root.is_dir() and any(root.iterdir()):
            raise SamfedError(
                f"Output folder {root} is not empty and holds no earlier `samfed predict` output; "
                "predict never writes over other files: choose an empty or new --out."
            )
        return None
    earlier = _read_record(root)
    if mode == "new":
        raise SamfedError(
            f"Output folder {root} holds an earlier predict output ({len(earlier[1])} images): "
            "pass --overwrite to replace it or --resume to finish it."
        )
    return earlier


def open_output(
    root: str | Path, ids: list[str], sources: list[str], settings: dict, overlays: bool, mode: Mode = "new"
) -> OutputFolder:
    """Accept `root` for a run over `ids` (one per source image) with `settings`, or raise SamfedError.

    Writes the record before any image output. `mode`: see the module docstring.
    """
    root = Path(root)
    earlier = check_output(root, mode)
    settings = json.loads(json.dumps(settings))  # the form it takes in the record
    folder = OutputFolder(root, ids, overlays)
    if earlier is not None:
        old_settings, old_ids, old_sources = earlier
        if mode == "resume":
            _check_resumable(root, settings, ids, sources, old_settings, old_ids, old_sources)
            _refuse_foreign(root, [], set(own_files(root, ids)), [])
            folder.done = _journal_rows(root, ids, overlays)
            _write_journal(root, list(folder.done.values()))
            return folder
        old = own_files(root, old_ids)
        _refuse_foreign(root, own_files(root, ids), set(old), sources)
        try:
            _delete(root, old)
        except OSError as exc:
            raise SamfedError(
                f"Cannot replace the earlier predict output in {root} ({exc.strerror})."
            ) from None
    record = {
        "format": RECORD_FORMAT,
        "settings": settings,
        "images": [{"id": i, "source": s} for i, s in zip(ids, sources, strict=True)],
    }
    try:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(root / RECORD_NAME, json.dumps(record, indent=1))
    except OSError as exc:
        raise _write_error(root / RECORD_NAME, exc) from None
    return folder


def _check_resumable(
    root: Path,
    settings: dict,
    ids: list[str],
    sources: list[str],
    old_settings: dict,
    old_ids: list[str],
    old_sources: list[str],
) -> None:
    """SamfedError unless the earlier run in `root` used the same settings and images."""
    changed = sorted(
        k for k in settings.keys() | old_settings.keys() if settings.get(k) != old_settings.get(k)
    )
    if changed:
        raise SamfedError(
            f"Cannot --resume in {root}: the earlier run used other {', '.join(changed)}; "
            "pass --overwrite to start over."
        )
    if ids != old_ids or sources != old_sources:
        raise SamfedError(
            f"Cannot --resume in {root}: the earlier run was over other images ({len(old_ids)}); "
            "pass --overwrite to start over."
        )


def _write_journal(root: Path, rows: list[Row]) -> None:
    """Rewrite the journal with only `rows` (drops a torn line before new rows are appended)."""
    try:
        atomic_write_text(root / JOURNAL_NAME, "".join(json.dumps(asdict(r)) + "\n" for r in rows))
    except OSError as exc:
        raise _write_error(root / JOURNAL_NAME, exc) from None


def write_summary(root: Path, summary: dict) -> None:
    """predict_summary.json."""
    try:
        (Path(root) / SUMMARY_NAME).write_text(json.dumps(summary, indent=2))
    except OSError as exc:
        raise _write_error(Path(root) / SUMMARY_NAME, exc) from None
