"""Export manifests: the contract between `samfed export` and the torch-free edge runtime.

An export directory holds model files plus `manifest.json`:

```
{"format": "samfed-export/1", "arch": ..., "norm": ..., "source_run": ..., "source_checkpoint": ...,
 "inputs":  [{"name": "image",  "shape": ["batch", 3, S, S], "dtype": "float32", ...}],
 "outputs": [{"name": "logits", "shape": ["batch", 1, S, S], "dtype": "float32", ...}],
 "preprocessing": Preprocessing.to_dict(), "threshold": 0.5,
 "artefacts": {"onnx-fp32": {"backend": "onnxruntime", "precision": "fp32", "path": "model_fp32.onnx",
                             "files": [...], "parity": {...}, "latency": {...}}, ...},
 "recommended": "onnx-int8", "recommendation_reason": "...",
 "files": {"model_fp32.onnx": "<sha256>", ...}}
```

`load_manifest` verifies the sha256 of every listed file, so a tampered or truncated model is
refused before it is run. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from samfed.errors import SamfedError
from samfed.preprocess import Preprocessing

MANIFEST_NAME = "manifest.json"
FORMAT = "samfed-export/1"
BACKENDS = ("onnxruntime", "openvino")
PRECISIONS = ("fp32", "int8")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_files(root: Path, names: list[str]) -> dict[str, str]:
    """{relative name: sha256} for files under `root`."""
    return {name: sha256_file(root / name) for name in sorted(names)}


@dataclass(frozen=True)
class Artefact:
    """One runnable model file in an export directory."""

    key: str  # e.g. "onnx-int8"
    backend: str  # "onnxruntime" | "openvino"
    precision: str  # "fp32" | "int8"
    path: Path  # absolute path of the .onnx or .xml


@dataclass(frozen=True)
class Manifest:
    """A verified export directory."""

    root: Path
    data: dict
    preprocessing: Preprocessing
    threshold: float
    artefacts: dict[str, Artefact]
    recommended: str | None

    def select(self, backend: str = "auto", precision: str = "auto") -> Artefact:
        """Pick an artefact: `auto` means the manifest's recommendation (or the best available)."""
        if backend not in ("auto", *BACKENDS):
            raise SamfedError(f"Unknown backend {backend!r}; expected auto, onnxruntime or openvino.")
        if precision not in ("auto", *PRECISIONS):
            raise SamfedError(f"Unknown precision {precision!r}; expected auto, int8 or fp32.")
        rec = self.artefacts.get(self.recommended or "")
        cands = [
            a
            for a in self.artefacts.values()
            if backend in ("auto", a.backend) and precision in ("auto", a.precision)
        ]
        if not cands:
            have = ", ".join(sorted(self.artefacts)) or "none"
            raise SamfedError(
                f"The export in {self.root} has no {backend}/{precision} model (it has: {have})."
            )
        if rec is not None and rec in cands:
            return rec
        # Prefer the recommended precision, then ONNX Runtime, then FP32 (the safe default).
        want = rec.precision if rec is not None and precision == "auto" else precision
        cands.sort(key=lambda a: (a.precision != want, a.backend != "onnxruntime", a.precision != "fp32"))
        return cands[0]


def load_manifest(export_dir: str | Path, verify: bool = True) -> Manifest:
    """Read `export_dir/manifest.json` and (by default) verify the sha256 of every listed file."""
    root = Path(export_dir)
    path = root / MANIFEST_NAME if root.is_dir() else root
    root = path.parent
    if not path.is_file():
        raise SamfedError(f"No {MANIFEST_NAME} in {root}: pass a directory written by `samfed export`.")
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
        files: dict[str, str] = data["files"]
        prep = Preprocessing.from_dict(data["preprocessing"])
        threshold = float(data["threshold"])
        arts = {
            key: Artefact(key, a["backend"], a["precision"], root / a["path"])
            for key, a in data["artefacts"].items()
        }
    except (ValueError, KeyError, TypeError) as exc:
        raise SamfedError(f"Manifest {path} is not a valid samfed export manifest ({exc}).") from None
    if verify:
        verify_files(root, files)
    for a in arts.values():
        if a.path.relative_to(root).as_posix() not in files:
            raise SamfedError(f"Manifest {path} lists model {a.path.name} without a sha256; re-export it.")
    return Manifest(root, data, prep, threshold, arts, data.get("recommended"))


def verify_files(root: Path, files: dict[str, str]) -> None:
    """Raise SamfedError unless every file exists with the recorded sha256."""
    for name, digest in files.items():
        f = root / name
        if not f.is_file():
            raise SamfedError(f"Export file {f} listed in the manifest is missing.")
        if sha256_file(f) != digest:
            raise SamfedError(
                f"sha256 hash mismatch for {f}: the file was modified or corrupted after export; "
                "re-export the model."
            )
