"""Write `manifest.json` for an export directory: interface, preprocessing, hashes, measurements."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import samfed
from edge.manifest import FORMAT, MANIFEST_NAME, hash_files
from edge.session import INPUT_NAME, OUTPUT_NAME
from samfed.preprocess import Preprocessing


def io_spec(size: int) -> tuple[list[dict], list[dict]]:
    """The model's input and output description (NCHW, dynamic batch)."""
    inputs = [
        {
            "name": INPUT_NAME,
            "shape": ["batch", 3, size, size],
            "dtype": "float32",
            "layout": "NCHW",
            "description": "RGB resized and normalised as in `preprocessing`",
        }
    ]
    outputs = [
        {
            "name": OUTPUT_NAME,
            "shape": ["batch", 1, size, size],
            "dtype": "float32",
            "description": "foreground logits: sigmoid, then foreground where probability >= threshold",
        }
    ]
    return inputs, outputs


def write_manifest(
    out_dir: Path,
    *,
    arch: str,
    norm: str,
    prep: Preprocessing,
    threshold: float,
    artefacts: dict[str, dict],
    recommended: str,
    recommendation_reason: str,
    warnings: list[str],
    **extra,
) -> Path:
    """Hash every file under out_dir (except the manifest) and write manifest.json; returns its path."""
    names = sorted(
        p.relative_to(out_dir).as_posix()
        for p in out_dir.rglob("*")
        if p.is_file() and p.name != MANIFEST_NAME
    )
    inputs, outputs = io_spec(prep.size)
    manifest = {
        "format": FORMAT,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "samfed_version": samfed.__version__,
        "arch": arch,
        "norm": norm,
        "inputs": inputs,
        "outputs": outputs,
        "preprocessing": prep.to_dict(),
        "threshold": threshold,
        "artefacts": artefacts,
        "recommended": recommended,
        "recommendation_reason": recommendation_reason,
        "warnings": warnings,
        **extra,
        "files": hash_files(out_dir, names),
    }
    path = out_dir / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, default=str))
    return path
