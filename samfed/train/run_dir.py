"""The run directory: one folder holding everything needed to evaluate, export and resume a run.

Layout::

    config.toml          resolved RunConfig (flags and --config merged)
    split.json           samfed.data.partition.Split
    data/                the built-in synthetic set (only when --data was omitted)
    teacher/             fine-tuned teacher (samfed.teacher.save_teacher) + finetune.json
    state/checkpoint.pt  resume state after the last finished round (atomic writes); once the run
                         has finished, without the client models (they are in clients/<k>/)
    state/config.toml    the configuration the run started with (resume refuses changed method settings)
    global/              global student  (export.checkpoint: student.safetensors + student.json)
    clients/<k>/         each client's student, same format
    metrics.jsonl        one JSON object per event: server init, client update, round summary,
                         supervised baseline round, final
    plots/*.png          validation Dice, loss, agreement per round; the qualitative panel
    summary.json         final table, times per stage, versions, command line
    report.md, report.html
    train.log            what the console showed (appended on resume; not in the manifest)
    manifest.json        sha256 and size of every file except train.log and the manifest itself

Caches that only save time (encoder embeddings, teacher maps, the initial global model) live
outside the run, in `cache_folder()`: keyed by content, shared by runs, safe to delete.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from samfed.errors import SamfedError
from samfed.fileio import atomic_write_bytes, atomic_write_text, sha256_file  # also imported from here

MANIFEST_SKIP = ("cache", "manifest.json", "train.log")  # cache/: runs made before the shared cache
RUN_FORMAT = "samfed-run/1"
CACHE_ENV = "SAMFED_CACHE"


def cache_folder(explicit: str | Path | None = None) -> Path:
    """The folder of speed-up caches: `explicit` (--cache), else $SAMFED_CACHE, else
    $XDG_CACHE_HOME/samfed, else ~/.cache/samfed."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "samfed"


def require_writable_cache(folder: Path) -> None:
    """SamfedError naming the folder when the cache cannot be created or written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        ok = os.access(folder, os.W_OK | os.X_OK)
    except OSError:
        ok = False
    if not ok:
        raise SamfedError(
            f"The cache folder {folder} cannot be written; pass --cache DIR or set {CACHE_ENV} to a "
            "folder you may write to."
        )


def _clean(v: Any) -> Any:
    """JSON-safe values: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, str):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class RunDir:
    """Paths and writers of one run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # paths ------------------------------------------------------------------------------------
    config = property(lambda self: self.root / "config.toml")
    split = property(lambda self: self.root / "split.json")
    data = property(lambda self: self.root / "data")
    teacher = property(lambda self: self.root / "teacher")
    checkpoint = property(lambda self: self.root / "state" / "checkpoint.pt")
    start_config = property(lambda self: self.root / "state" / "config.toml")
    global_dir = property(lambda self: self.root / "global")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    plots = property(lambda self: self.root / "plots")
    summary = property(lambda self: self.root / "summary.json")
    report_md = property(lambda self: self.root / "report.md")
    report_html = property(lambda self: self.root / "report.html")
    manifest = property(lambda self: self.root / "manifest.json")
    log_file = property(lambda self: self.root / "train.log")

    def client_dir(self, k: int) -> Path:
        return self.root / "clients" / str(k)

    # metrics ----------------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        """Append one JSON line to metrics.jsonl."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(_clean(record), sort_keys=True) + "\n")

    def read_metrics(self) -> list[dict]:
        """The records of metrics.jsonl. A last line that is not JSON (the process was killed while
        appending it) is skipped; a bad line before it raises SamfedError."""
        if not self.metrics.is_file():
            return []
        lines = self.metrics.read_bytes().decode("utf-8", errors="replace").splitlines()
        records = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if not isinstance(rec, dict) or not isinstance(rec.get("round", 0), int):
                if i == len(lines) - 1:
                    break
                raise SamfedError(f"{self.metrics} line {i + 1} is not a metrics record; the log is corrupt.")
            records.append(rec)
        return records

    def truncate_metrics(self, last_round: int) -> None:
        """Keep only records of rounds <= last_round (and round-less ones): used when resuming. The
        final record and the baseline's records go too (they are written again at the end)."""
        keep = [
            r
            for r in self.read_metrics()
            if r.get("round", 0) <= last_round and r.get("event") not in ("final", "baseline")
        ]
        atomic_write_text(self.metrics, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))

    # state ------------------------------------------------------------------------------------
    def save_state(self, state: dict) -> None:
        """torch.save to a temporary file, then os.replace: a crash never leaves half a checkpoint."""
        import io

        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.checkpoint, buf.getvalue())

    def load_state(self) -> dict:
        import torch

        if not self.checkpoint.is_file():
            raise SamfedError(f"Nothing to resume in {self.root}: {self.checkpoint} does not exist.")
        try:
            return torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - corrupt or foreign file
            raise SamfedError(f"Cannot read the resume state {self.checkpoint} ({exc}).") from None

    def write_json(self, path: Path, obj: Any) -> None:
        atomic_write_text(path, json.dumps(_clean(obj), indent=2, sort_keys=True) + "\n")

    # manifest ---------------------------------------------------------------------------------
    def write_manifest(self) -> dict:
        """manifest.json: {relative path: {sha256, bytes}} for every file but MANIFEST_SKIP."""
        files = {}
        for p in sorted(self.root.rglob("*")):
            rel = p.relative_to(self.root)
            if not p.is_file() or rel.parts[0] in MANIFEST_SKIP or p.name.endswith(".tmp"):
                continue
            files[rel.as_posix()] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        manifest = {"format": RUN_FORMAT, "files": files}
        self.write_json(self.manifest, manifest)
        return manifest


def manifest_format(folder: str | Path) -> str | None:
    """The `format` of folder/manifest.json (which kind of samfed artefact the folder holds: a run,
    an export, ...); None without a manifest, "unreadable" when it is not a JSON object."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unreadable"
    fmt = data.get("format") if isinstance(data, dict) else None
    return fmt if isinstance(fmt, str) else "unreadable"


def verify_manifest(root: str | Path) -> list[str]:
    """Relative paths whose current sha256 differs from manifest.json (missing files included)."""
    run = RunDir(root)
    if not run.manifest.is_file():
        raise SamfedError(f"{run.root} has no manifest.json.")
    files = json.loads(run.manifest.read_text())["files"]
    bad = []
    for rel, info in files.items():
        p = run.root / rel
        if not p.is_file() or sha256_file(p) != info["sha256"]:
            bad.append(rel)
    return bad
