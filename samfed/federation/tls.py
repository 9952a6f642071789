"""Certificates and node keys for a SAM-Fed federation (TLS between sites, SuperNode authentication).

A certificate folder (`samfed certs init DIR`) holds:

    ca.pem       the federation's CA certificate: every node gets a copy (`--tls-ca`)
    ca.key       the CA's private key (0600): kept, so the server certificate can be renewed or
                 re-issued for another host name without touching the nodes' ca.pem
    server.pem   the SuperLink/gateway certificate, signed by the CA, naming the hosts nodes dial
    server.key   its private key (0600)
    nodes/       NAME.pub per allowed node (OpenSSH ECDSA P-384): the list `samfed serve` registers

- `make_ca`, `issue_server_cert`, `make_certificates` (both): the CA and the server certificate.
- `make_node_key`, `node_key_pair`, `check_node_public_key`: node keys in the format
  `flower-supernode --auth-supernode-private-key` and `flwr supernode register` expect.
- `certificate_hosts`, `load_certificate`, `fingerprint`, `ssh_fingerprint`: what `show` prints.
- `check_validity`: refuses an expired (or not yet valid) certificate in one line and returns a
  warning sentence when it expires within `EXPIRY_WARNING_DAYS`.

A production deployment may use certificates from the hospital's own PKI instead (the same
ca.pem, server.pem, server.key). Torch-free; needs `cryptography`.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from samfed.errors import SamfedError

# A CA that outlives several server certificates: renewing server.pem never changes the ca.pem
# every node holds. 10 years covers a multi-year study plus follow-up.
CA_DAYS = 3650
# The longest validity that TLS clients still commonly accept for a server certificate (the
# CA/Browser Forum limit of 2018-2020, still enforced by some platforms for private CAs too):
# over two years, so a study rarely needs a renewal, short enough to limit a leaked key's use.
SERVER_DAYS = 825
EXPIRY_WARNING_DAYS = 30  # serve and node warn this many days before a certificate expires
LOOPBACK_HOSTS = ("localhost", "127.0.0.1")  # the gateway and flwr reach the SuperLink there
NODES_FOLDER = "nodes"
CA_NAME = "samfed federation CA"
SERVER_NAME = "samfed-superlink"
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class CertificateWarning(UserWarning):
    """A certificate expires soon (the CLI prints it as one yellow line)."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA certificate (given to nodes and to `flwr`) and the SuperLink's cert/key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_folder(cls, folder: str | Path) -> TlsFiles:
        folder = Path(folder)
        return cls(folder / "ca.pem", folder / "server.pem", folder / "server.key")


@dataclass(frozen=True)
class CaFiles:
    """The CA certificate and its kept private key."""

    cert: Path
    key: Path

    @classmethod
    def in_folder(cls, folder: str | Path) -> CaFiles:
        folder = Path(folder)
        return cls(folder / "ca.pem", folder / "ca.key")


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode's key pair (OpenSSH format): the private key stays on the node."""

    private_key: Path
    public_key: Path


def refuse_existing(paths, overwrite: bool = False) -> None:
    """SamfedError naming the `paths` that exist already, unless `overwrite`."""
    taken = [str(p) for p in paths if Path(p).exists() or Path(p).is_symlink()]
    if taken and not overwrite:
        raise SamfedError(
            f"{', '.join(taken)} already exist(s); pass --force to replace (nothing was written)."
        )


def write_files(files: dict[Path, tuple[bytes, bool]], overwrite: bool = False) -> None:
    """Write {path: (content, private)} atomically; private files get mode 0600, others 0644.
    SamfedError, before writing anything, when one exists and `overwrite` is False."""
    from samfed.fileio import atomic_write_bytes

    refuse_existing(files, overwrite)
    for path, (data, private) in files.items():
        atomic_write_bytes(path, data)  # a temporary file of mode 0600, then renamed
        path.chmod(0o600 if private else 0o644)


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(hosts: list[str]):
    from cryptography import x509

    entries = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _window(days: int, valid_from: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    """(not before, not after): from `valid_from` (default 5 minutes ago, for clock skew), `days` long."""
    if not (isinstance(days, int) and days >= 1):
        raise SamfedError(f"A certificate must be valid for a whole number of days >= 1, not {days!r}.")
    start = (valid_from or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).replace(microsecond=0)
    return start, start + dt.timedelta(days=days)


def make_ca(
    folder: str | Path,
    days: int = CA_DAYS,
    common_name: str = CA_NAME,
    valid_from: dt.datetime | None = None,
    overwrite: bool = False,
) -> CaFiles:
    """Write ca.pem and ca.key (0600) into `folder`: a CA that may sign server certificates only."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    start, end = _window(days, valid_from)
    key = ec.generate_private_key(ec.SECP384R1())
    name = _name(common_name)
    usage = dict.fromkeys(
        ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement"), False
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
                **usage,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    files = CaFiles.in_folder(folder)
    write_files({files.cert: (_cert_pem(cert), False), files.key: (_key_pem(key), True)}, overwrite)
    return files


def load_ca(folder: str | Path):
    """(CA certificate, CA private key) kept in `folder`; SamfedError when either is missing or bad."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    files = CaFiles.in_folder(folder)
    for path in (files.cert, files.key):
        if not path.is_file():
            raise SamfedError(
                f"{path} does not exist; create the CA first with `samfed certs init {folder}`."
            )
    cert = load_certificate(files.cert)
    try:
        key = load_pem_private_key(files.key.read_bytes(), None)
    except (ValueError, TypeError):
        raise SamfedError(f"{files.key} is not an unencrypted PEM private key.") from None
    if key.public_key() != cert.public_key():
        raise SamfedError(f"{files.key} is not the private key of {files.cert}.")
    return cert, key


def issue_server_cert(
    folder: str | Path,
    hosts: list[str] | None = None,
    days: int = SERVER_DAYS,
    common_name: str = SERVER_NAME,
    valid_from: dt.datetime | None = None,
    overwrite: bool = False,
) -> TlsFiles:
    """Write server.pem and server.key (0600), signed by the CA kept in `folder`, valid for
    `hosts` (default: localhost, 127.0.0.1; `samfed serve` needs 127.0.0.1 among them). Refuses
    a certificate that would outlive the CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_cert, ca_key = load_ca(folder)
    start, end = _window(days, valid_from)
    if end > ca_cert.not_valid_after_utc:
        raise SamfedError(
            f"A server certificate valid for {days} days would outlive the CA (valid until "
            f"{ca_cert.not_valid_after_utc:%Y-%m-%d}); pass fewer --days or create a new CA."
        )
    names = list(dict.fromkeys(hosts or LOOPBACK_HOSTS))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(_san(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles.in_folder(folder)
    write_files(
        {files.server_cert: (_cert_pem(cert), False), files.server_key: (_key_pem(key), True)}, overwrite
    )
    return files


def make_certificates(
    folder: str | Path,
    hosts: list[str] | None = None,
    days: int = SERVER_DAYS,
    common_name: str = SERVER_NAME,
    ca_days: int = CA_DAYS,
    valid_from: dt.datetime | None = None,
    overwrite: bool = False,
) -> TlsFiles:
    """A new CA (ca.pem, ca.key) and a server certificate (server.pem, server.key) in `folder`.
    Hosts: `hosts` (default: localhost, 127.0.0.1). Nothing is written when any of the four files
    exists and `overwrite` is False, or when the server certificate would outlive the CA."""
    folder = Path(folder)
    tls, ca = TlsFiles.in_folder(folder), CaFiles.in_folder(folder)
    refuse_existing([ca.cert, ca.key, tls.server_cert, tls.server_key], overwrite)
    _window(days, valid_from)
    if days > ca_days:
        raise SamfedError(f"The server certificate ({days} days) cannot outlive the CA ({ca_days} days).")
    folder.mkdir(parents=True, exist_ok=True)
    make_ca(folder, ca_days, valid_from=valid_from, overwrite=overwrite)
    return issue_server_cert(folder, hosts, days, common_name, valid_from, overwrite=True)


def load_certificate(path: str | Path):
    """The X.509 certificate in PEM file `path` (the first one of a bundle); SamfedError otherwise."""
    from cryptography import x509

    path = Path(path)
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise SamfedError(f"{path} is not a PEM certificate.") from None
    except OSError as exc:
        raise SamfedError(f"Cannot read the certificate {path} ({exc.strerror or exc}).") from None


def certificate_hosts(path: str | Path) -> set[str]:
    """Host names and IP addresses a PEM certificate is valid for (its subject alternative names);
    ValueError when the file is not a PEM certificate."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    return cert_hosts(cert)


def cert_hosts(cert) -> set[str]:
    """The DNS names and IP addresses of a certificate's subject alternative names."""
    from cryptography import x509

    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {*names.get_values_for_type(x509.DNSName), *map(str, names.get_values_for_type(x509.IPAddress))}


def fingerprint(cert) -> str:
    """SHA-256 of the certificate's DER bytes, as `openssl x509 -fingerprint -sha256` prints it."""
    from cryptography.hazmat.primitives import hashes

    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


RENEW_HINT = "renew it with `samfed certs renew`"  # the server certificate, on the server
NEW_CA_HINT = "make a new CA with `samfed certs init --force` and give its ca.pem to every node"
NODE_CA_HINT = "ask the server's operator for the new ca.pem"
NODE_SERVER_HINT = "ask the server's operator to renew it (`samfed certs renew`)"


def check_validity(
    cert,
    label: str,
    now: dt.datetime | None = None,
    warn_days: int = EXPIRY_WARNING_DAYS,
    hint: str = RENEW_HINT,
) -> str | None:
    """None when `cert` (a certificate or its PEM file) is valid for more than `warn_days` days; a
    warning sentence when it expires sooner. SamfedError (one line) when it has expired or is not
    valid yet. `label` names it in the messages (e.g. "server certificate certs/server.pem")."""
    if isinstance(cert, str | Path):
        cert = load_certificate(cert)
    now = now or dt.datetime.now(dt.UTC)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now >= end:
        raise SamfedError(f"The {label} expired on {end:%Y-%m-%d %H:%M} UTC; {hint} before starting.")
    if now < start:
        raise SamfedError(
            f"The {label} is valid only from {start:%Y-%m-%d %H:%M} UTC; check this machine's clock."
        )
    left = end - now
    if left <= dt.timedelta(days=warn_days):
        return f"the {label} expires on {end:%Y-%m-%d %H:%M} UTC ({left.days} day(s) left); {hint} in time."
    return None


def warn_if_expiring(cert, label: str, hint: str = RENEW_HINT) -> None:
    """`check_validity`, its warning issued as a CertificateWarning (one yellow line in the CLI)."""
    import warnings

    message = check_validity(cert, label, hint=hint)
    if message:
        warnings.warn(message, CertificateWarning, stacklevel=2)


def node_key_pair() -> tuple[bytes, bytes]:
    """A new ECDSA P-384 key pair: (private key, public key), both in OpenSSH format."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public


def check_node_name(name: str) -> str:
    """`name` when it can name a node and its key file (letters, digits, . _ -; up to 64)."""
    if not NODE_NAME.match(name or ""):
        raise SamfedError(
            f"{name!r} cannot name a node; use up to 64 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit (e.g. clinic-b)."
        )
    return name


def make_node_key(folder: str | Path, name: str = "node", overwrite: bool = False) -> NodeKey:
    """Write `<name>` (private, OpenSSH, 0600) and `<name>.pub` into `folder`."""
    folder = Path(folder)
    out = NodeKey(folder / check_node_name(name), folder / f"{name}.pub")
    refuse_existing([out.private_key, out.public_key], overwrite)
    private, public = node_key_pair()
    folder.mkdir(parents=True, exist_ok=True)
    write_files(
        {out.private_key: (private, True), out.public_key: (public + f" {name}\n".encode(), False)}, True
    )
    return out


def check_node_public_key(path: str | Path) -> bytes:
    """The OpenSSH public key line of `path` when it is an ECDSA P-384 key (what Flower's node
    authentication takes); SamfedError naming the file otherwise."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    path = Path(path)
    try:
        data = path.read_bytes()
        key = load_ssh_public_key(data.strip())
    except OSError as exc:
        raise SamfedError(f"Cannot read the node key {path} ({exc.strerror or exc}).") from None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not (isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp384r1"):
        raise SamfedError(
            f"{path} is not an OpenSSH ECDSA P-384 public key (make one with `samfed certs add-node` "
            "or `ssh-keygen -t ecdsa -b 384`)."
        )
    return data.strip()


def check_node_private_key(path: str | Path) -> None:
    """SamfedError unless `path` is an unencrypted OpenSSH ECDSA P-384 private key."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    path = Path(path)
    try:
        key = load_ssh_private_key(path.read_bytes(), None)
    except OSError as exc:
        raise SamfedError(f"Cannot read the node key {path} ({exc.strerror or exc}).") from None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not (isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"):
        raise SamfedError(
            f"{path} is not an unencrypted OpenSSH ECDSA P-384 private key (the node key made by "
            "`samfed certs add-node`)."
        )


def ssh_fingerprint(public_line: bytes) -> str:
    """SHA256:... of an OpenSSH public key line, as `ssh-keygen -l` prints it."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def node_public_keys(paths: list[Path]) -> list[Path]:
    """The .pub files named by `paths` (files as they are, folders: their *.pub, sorted), each
    checked to be an ECDSA P-384 key; SamfedError for a missing path or an empty folder."""
    keys: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(x for x in p.glob("*.pub") if x.is_file())
            if not found:
                raise SamfedError(f"The node key folder {p} holds no .pub file.")
            keys += found
        elif p.is_file():
            keys.append(p)
        else:
            raise SamfedError(f"Node key {p} does not exist.")
    for key in keys:
        check_node_public_key(key)
    stems = [k.stem for k in keys]
    dup = next((s for s in stems if stems.count(s) > 1), None)
    if dup:
        raise SamfedError(f"Two node keys are named {dup}.pub; every node needs a name of its own.")
    return keys


def main(argv: list[str] | None = None) -> None:
    """python -m samfed.federation.tls DIR [--host NAME ...] [--node-key NAME ...] (see `samfed certs`)"""
    import argparse

    ap = argparse.ArgumentParser(
        description="Write a CA + SuperLink certificate and/or node keys (pilots, tests; "
        "`samfed certs` does the same and more)."
    )
    ap.add_argument("folder", type=Path)
    ap.add_argument(
        "--host", action="append", default=[], help="host name or IP nodes use to reach the server"
    )
    ap.add_argument("--node-key", action="append", default=[], help="write a node key pair with this name")
    ap.add_argument("--force", action="store_true", help="replace files that exist")
    args = ap.parse_args(argv)
    try:
        if args.host or not args.node_key:
            files = make_certificates(args.folder, [*LOOPBACK_HOSTS, *args.host], overwrite=args.force)
            print(f"CA {files.ca_cert} (give it to every node); server cert {files.server_cert}")
        for name in args.node_key:
            key = make_node_key(args.folder, name, overwrite=args.force)
            print(f"node key {key.private_key} (stays on the node); {key.public_key} goes to the server")
    except SamfedError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
