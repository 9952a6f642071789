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

`load_manifest` treats the folder as untrusted input: it validates the manifest's structure and
values, keeps every model file and every file a model refers to (an OpenVINO .xml's .bin, ONNX
external data) inside the folder (symlinks resolved), requires and verifies a sha256 for each of
them, and verifies the Ed25519 signature in `manifest.sig` when there is one (edge.signature), so
a tampered, truncated or redirected model is refused before it is run. Torch-free.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from edge.onnx_external import external_data_locations
from edge.signature import SIGNATURE_NAME, trusted_fingerprint, verify_signature
from samfed.errors import SamfedError
from samfed.fileio import sha256_file
from samfed.preprocess import Preprocessing

MANIFEST_NAME = "manifest.json"
FORMAT = "samfed-export/1"
BACKENDS = ("onnxruntime", "openvino")
PRECISIONS = ("fp32", "int8")
MODEL_SUFFIX = {"onnxruntime": ".onnx", "openvino": ".xml"}
RESIZE_MODES = ("stretch-bilinear",)  # what samfed.preprocess.resize_image implements
SIZE_RANGE = (8, 4096)  # px; beyond that a batch of inputs no longer fits a clinic workstation
STD_RANGE = (1e-3, 10.0)  # inputs are in [0, 1]: a smaller std amplifies them past any trained range
_SHA256 = re.compile(r"[0-9a-f]{64}")


def hash_files(root: Path, names: list[str]) -> dict[str, str]:
    """{relative name: sha256} for files under `root`."""
    return {name: sha256_file(root / name) for name in sorted(names)}


def _number(value: object, what: str) -> float:
    """A finite JSON number (bool excluded) as float; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def check_preprocessing(prep: Preprocessing) -> None:
    """ValueError unless size, mean, std and resize mode are values a model can be run with."""
    lo, hi = SIZE_RANGE
    if isinstance(prep.size, bool) or not isinstance(prep.size, int) or not lo <= prep.size <= hi:
        raise ValueError(f"preprocessing size must be an integer from {lo} to {hi} px, got {prep.size!r}")
    for name, values, (vlo, vhi) in (("mean", prep.mean, (0.0, 1.0)), ("std", prep.std, STD_RANGE)):
        if not isinstance(values, tuple | list) or len(values) != 3:
            raise ValueError(f"preprocessing {name} must be 3 numbers (R, G, B), got {values!r}")
        for v in values:
            if not vlo <= _number(v, f"preprocessing {name}") <= vhi:
                raise ValueError(f"preprocessing {name} values must lie in [{vlo:g}, {vhi:g}], got {v!r}")
    if prep.resize not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {prep.resize!r} (known: {', '.join(RESIZE_MODES)})")


def parse_preprocessing(d: object) -> Preprocessing:
    """Untrusted `preprocessing` JSON -> checked Preprocessing; ValueError names what is wrong."""
    fields = set(Preprocessing.__dataclass_fields__)
    if not isinstance(d, dict) or set(d) != fields:
        got = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"preprocessing must have exactly the fields {sorted(fields)}, got {got}")
    for name in ("mean", "std"):
        if not isinstance(d[name], list):
            raise ValueError(f"preprocessing {name} must be a list of 3 numbers, got {d[name]!r}")
    prep = Preprocessing(size=d["size"], mean=tuple(d["mean"]), std=tuple(d["std"]), resize=d["resize"])
    check_preprocessing(prep)
    return Preprocessing(prep.size, tuple(map(float, prep.mean)), tuple(map(float, prep.std)), prep.resize)


def check_threshold(value: object) -> float:
    """A foreground probability threshold strictly between 0 and 1; ValueError otherwise."""
    t = _number(value, "threshold")
    if not 0.0 < t < 1.0:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {value!r}")
    return t


def member_path(root: Path, name: object, what: str) -> Path:
    """`root / name` for a relative name that stays inside `root` after resolving symlinks.

    ValueError for anything else: a non-string, an absolute or drive path, `..`, backslashes.
    """
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise ValueError(f"{what} {name!r} is not a relative file name")
    posix = PurePosixPath(name)
    if posix.is_absolute() or PureWindowsPath(name).drive or ".." in posix.parts:
        raise ValueError(f"{what} {name!r} must be a path inside the export folder")
    path = root / posix
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        raise ValueError(f"{what} {name!r} resolves to {path.resolve()}, outside the export folder") from None
    except (OSError, RuntimeError):  # symlink loop
        raise ValueError(f"{what} {name!r} cannot be resolved (symlink loop?)") from None
    return path


@dataclass(frozen=True)
class Artefact:
    """One runnable model file in an export directory."""

    key: str  # e.g. "onnx-int8"
    backend: str  # "onnxruntime" | "openvino"
    precision: str  # "fp32" | "int8"
    path: Path  # the .onnx or .xml, inside the export folder
    files: tuple[str, ...] = ()  # every hashed file it needs, the model file first


@dataclass(frozen=True)
class Manifest:
    """A verified export directory. `signer`: fingerprint of a verified signature, None if unsigned."""

    root: Path
    data: dict
    preprocessing: Preprocessing
    threshold: float
    artefacts: dict[str, Artefact]
    recommended: str | None
    signer: str | None = None

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


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def _parse_files(root: Path, files: object) -> dict[str, str]:
    """`files` JSON -> {normalised relative name: sha256}, every name inside `root`."""
    if not isinstance(files, dict) or not files:
        raise ValueError("files must map each file name to its sha256")
    out: dict[str, str] = {}
    for name, digest in files.items():
        key = member_path(root, name, "file").relative_to(root).as_posix()
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ValueError(f"the sha256 of {name!r} is not 64 lowercase hex digits")
        if key in out:
            raise ValueError(f"file {name!r} is listed twice")
        out[key] = digest
    return out


def _companions(root: Path, backend: str, model: Path) -> list[str]:
    """Names (relative to root) of the files a runtime opens besides `model` itself."""
    if backend == "openvino":  # read_model(x.xml) reads x.bin next to it
        return [model.with_suffix(".bin").relative_to(root).as_posix()]
    folder = model.parent.relative_to(root).as_posix()
    names = []
    for loc in sorted(external_data_locations(model)):  # ORT resolves them against the model's folder
        rel = posixpath.join(folder, loc)  # an absolute or `..` location stays so, and is refused
        names.append(
            member_path(root, rel, f"external data {loc!r} of {model.name}").relative_to(root).as_posix()
        )
    return names


def _parse_artefact(root: Path, key: object, a: object) -> Artefact:
    """One `artefacts` entry -> Artefact (its model file inside root, with a suffix that fits)."""
    if not isinstance(key, str) or not isinstance(a, dict):
        raise ValueError(f"artefact {key!r} must be an object")
    backend, precision = a.get("backend"), a.get("precision")
    if backend not in BACKENDS or precision not in PRECISIONS:
        raise ValueError(f"artefact {key!r} has backend {backend!r} / precision {precision!r}")
    path = member_path(root, a.get("path"), f"artefact {key!r} path")
    if path.suffix.lower() != MODEL_SUFFIX[backend]:
        raise ValueError(
            f"artefact {key!r} on {backend} needs a {MODEL_SUFFIX[backend]} file, got {path.name}"
        )
    listed = a.get("files", [])
    if not isinstance(listed, list):
        raise ValueError(f"artefact {key!r} files must be a list")
    names = [member_path(root, n, f"artefact {key!r} file").relative_to(root).as_posix() for n in listed]
    files = tuple(dict.fromkeys([path.relative_to(root).as_posix(), *names]))
    return Artefact(key, backend, precision, path, files)


def _parse(root: Path, data: object) -> tuple[dict[str, str], Preprocessing, float, dict[str, Artefact]]:
    """Validate the manifest JSON; ValueError/KeyError/TypeError describe the first problem."""
    if not isinstance(data, dict):
        raise ValueError("the manifest must be a JSON object")
    if data.get("format") != FORMAT:
        raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
    files = _parse_files(root, data["files"])
    prep = parse_preprocessing(data["preprocessing"])
    threshold = check_threshold(data["threshold"])
    if not isinstance(data["artefacts"], dict) or not data["artefacts"]:
        raise ValueError("artefacts must name at least one model")
    arts = {key: _parse_artefact(root, key, a) for key, a in data["artefacts"].items()}
    rec = data.get("recommended")
    if rec is not None and rec not in arts:
        raise ValueError(f"recommended artefact {rec!r} is not among the artefacts")
    return files, prep, threshold, arts


def _check_signature(path: Path, raw: bytes, trusted: list[str]) -> str | None:
    """Verify manifest.sig next to `path` (if any) against `trusted` fingerprints; the signer or None."""
    sig = path.parent / SIGNATURE_NAME
    signer = verify_signature(raw, sig) if sig.is_file() else None
    if trusted and signer not in trusted:
        who = f"is signed by {signer}" if signer else "is not signed"
        raise SamfedError(
            f"Export {path.parent} {who}, not by a trusted key ({', '.join(trusted)}); do not use it."
        )
    return signer


def load_manifest(export_dir: str | Path, verify: bool = True, trusted_keys: Iterable[str] = ()) -> Manifest:
    """Read `export_dir/manifest.json`, validate it, and (by default) verify every file's sha256.

    `trusted_keys` (fingerprints or PEM public key paths): when given, only a manifest signed by one
    of them is accepted; otherwise a present signature must verify and an unsigned one is allowed.
    """
    root = Path(export_dir)
    path = root / MANIFEST_NAME if root.is_dir() else root
    root = path.parent
    if not path.is_file():
        raise SamfedError(f"No {MANIFEST_NAME} in {root}: pass a directory written by `samfed export`.")
    trusted = [trusted_fingerprint(k) for k in trusted_keys]
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SamfedError(f"Cannot read manifest {path} ({exc.strerror}).") from None
    signer = _check_signature(path, raw, trusted)
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
        files, prep, threshold, arts = _parse(root, data)
    except KeyError as exc:
        raise SamfedError(
            f"Manifest {path} is not a valid samfed export manifest (no field {exc})."
        ) from None
    except (ValueError, TypeError) as exc:
        raise SamfedError(f"Manifest {path} is not a valid samfed export manifest ({exc}).") from None
    for a in arts.values():
        _require_hashed(path, a, files)
    if verify:
        verify_files(root, files)
    try:
        arts = {k: _with_companions(root, a) for k, a in arts.items()}
    except ValueError as exc:
        raise SamfedError(f"Manifest {path} is not a valid samfed export manifest ({exc}).") from None
    for a in arts.values():
        _require_hashed(path, a, files)
    return Manifest(root, data, prep, threshold, arts, data.get("recommended"), signer)


def _require_hashed(path: Path, art: Artefact, files: dict[str, str]) -> None:
    """SamfedError unless every file `art` needs has a sha256 in the manifest."""
    unhashed = [n for n in art.files if n not in files]
    if unhashed:
        raise SamfedError(
            f"Manifest {path} lists model {art.key} but no sha256 for {', '.join(unhashed)}: "
            "every file a model needs must be hashed; re-export it."
        )


def _with_companions(root: Path, art: Artefact) -> Artefact:
    """`art` with the files its runtime opens besides the model file added to `files`."""
    extra = [n for n in _companions(root, art.backend, art.path) if n not in art.files]
    return Artefact(art.key, art.backend, art.precision, art.path, (*art.files, *extra))


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
