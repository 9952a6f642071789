"""Write `manifest.json` for an export directory (interface, preprocessing, hashes, measurements)
and sign it with the exporter's Ed25519 key (`manifest.sig`, verified by edge.signature).

The signing key is a PEM PKCS#8 file, by default `$SAMFED_SIGNING_KEY` or
`${XDG_CONFIG_HOME:-~/.config}/samfed/signing_key.pem`, created on first use with mode 0600 (its
folder 0700) next to `signing_key.pub`, the public key a clinic passes to `--trusted-key`.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import stat
from pathlib import Path

import samfed
from edge.manifest import FORMAT, MANIFEST_NAME, hash_files
from edge.session import INPUT_NAME, OUTPUT_NAME
from edge.signature import DOMAIN, SIGNATURE_FORMAT, SIGNATURE_NAME, fingerprint, public_raw
from samfed.errors import SamfedError
from samfed.preprocess import Preprocessing

KEY_ENV = "SAMFED_SIGNING_KEY"


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
    """Hash every file under out_dir (except the manifest and its signature) and write manifest.json;
    returns its path. A signature of an earlier manifest there is removed (it no longer matches)."""
    (out_dir / SIGNATURE_NAME).unlink(missing_ok=True)
    names = sorted(
        p.relative_to(out_dir).as_posix()
        for p in out_dir.rglob("*")
        if p.is_file() and p.relative_to(out_dir).as_posix() not in (MANIFEST_NAME, SIGNATURE_NAME)
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


def default_key_path() -> Path:
    """The exporter's signing key: $SAMFED_SIGNING_KEY, else the per-user file under ~/.config/samfed."""
    if env := os.environ.get(KEY_ENV):
        return Path(env).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "samfed" / "signing_key.pem"


def _create_key(path: Path):
    """Make a new Ed25519 key at `path` (0600, folder 0700) and its public key at `path`.pub."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path.with_suffix(".pub").write_bytes(pub)
    return key


def _read_key(path: Path):
    """Load an Ed25519 private key; refuse one that others may read (POSIX)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    mode = path.stat().st_mode
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SamfedError(
            f"Signing key {path} is accessible by other users (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {path}`."
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise SamfedError(f"Signing key {path} is not an unencrypted PEM Ed25519 private key.")
    return key


def load_or_create_key(path: str | Path | None = None):
    """The Ed25519 private key at `path` (default: default_key_path()), created if it does not exist."""
    path = Path(path) if path else default_key_path()
    try:
        return _read_key(path) if path.exists() else _create_key(path)
    except OSError as exc:
        raise SamfedError(f"Cannot use signing key {path} ({exc.strerror or exc}).") from None


def sign_export(out_dir: str | Path, key_path: str | Path | None = None) -> str:
    """Sign out_dir/manifest.json into out_dir/manifest.sig; returns the signer's fingerprint."""
    out_dir = Path(out_dir)
    key = load_or_create_key(key_path)
    manifest = (out_dir / MANIFEST_NAME).read_bytes()
    raw = public_raw(key)
    sig = {
        "format": SIGNATURE_FORMAT,
        "algorithm": "ed25519",
        "signed_file": MANIFEST_NAME,
        "public_key": base64.b64encode(raw).decode(),
        "fingerprint": fingerprint(raw),
        "signature": base64.b64encode(key.sign(DOMAIN + manifest)).decode(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    (out_dir / SIGNATURE_NAME).write_text(json.dumps(sig, indent=2))
    return sig["fingerprint"]
