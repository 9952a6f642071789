"""Ed25519 signatures of export manifests: who produced a model, not only that it is intact. Torch-free.

`samfed export` writes `manifest.sig` next to `manifest.json`:

```
{"format": "samfed-signature/1", "algorithm": "ed25519", "signed_file": "manifest.json",
 "public_key": "<base64 of the 32-byte raw key>", "fingerprint": "SHA256:<hex>",
 "signature": "<base64 of the 64-byte signature over DOMAIN + the exact manifest bytes>"}
```

The manifest lists the sha256 of every model file, so its signature covers the whole export. A
key is named by its fingerprint: `SHA256:` + the hex sha256 of the raw public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from pathlib import Path

from samfed.errors import SamfedError

SIGNATURE_NAME = "manifest.sig"
SIGNATURE_FORMAT = "samfed-signature/1"
DOMAIN = b"samfed-export-manifest/1\x00"  # a signature made for anything else never verifies here
_FINGERPRINT = re.compile(r"(?:SHA256:)?([0-9a-fA-F]{64})")


def fingerprint(public_raw: bytes) -> str:
    """`SHA256:<hex>` of a raw 32-byte Ed25519 public key."""
    return "SHA256:" + hashlib.sha256(public_raw).hexdigest()


def public_raw(key) -> bytes:
    """Raw 32 bytes of an Ed25519 public (or private) key object."""
    from cryptography.hazmat.primitives import serialization

    if hasattr(key, "public_key"):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _b64(value: object, n: int, what: str, path: Path) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except binascii.Error:
        raw = b""
    if len(raw) != n:
        raise SamfedError(f"Signature file {path} has no valid {what}; re-sign the export.")
    return raw


def verify_signature(manifest_bytes: bytes, sig_path: Path) -> str:
    """Verify `sig_path` over `manifest_bytes`; returns the signer's fingerprint.

    Raises SamfedError for an unreadable, malformed or non-matching signature.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        sig = json.loads(sig_path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        raise SamfedError(f"Signature file {sig_path} is not readable JSON; re-sign the export.") from None
    if (
        not isinstance(sig, dict)
        or sig.get("format") != SIGNATURE_FORMAT
        or sig.get("algorithm") != "ed25519"
    ):
        raise SamfedError(f"Signature file {sig_path} is not a {SIGNATURE_FORMAT} Ed25519 signature.")
    raw = _b64(sig.get("public_key"), 32, "public key", sig_path)
    signature = _b64(sig.get("signature"), 64, "signature", sig_path)
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(signature, DOMAIN + manifest_bytes)
    except (InvalidSignature, ValueError):
        raise SamfedError(
            f"The signature {sig_path} does not match the manifest: the export was changed after "
            "it was signed; do not use it."
        ) from None
    return fingerprint(raw)


def trusted_fingerprint(spec: str) -> str:
    """A `--trusted-key` value -> fingerprint: a fingerprint (`SHA256:<hex>` or bare hex) or the
    path of a PEM public key (e.g. the exporter's `signing_key.pub`)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if m := _FINGERPRINT.fullmatch(spec.strip()):
        return "SHA256:" + m.group(1).lower()
    path = Path(spec)
    if not path.is_file():
        raise SamfedError(
            f"Trusted key {spec!r} is neither a key fingerprint (SHA256:<64 hex digits>) "
            "nor a public key file."
        )
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise SamfedError(f"Trusted key file {path} is not a PEM Ed25519 public key.")
    return fingerprint(public_raw(key))
