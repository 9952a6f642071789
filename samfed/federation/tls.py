"""Certificates and node keys for a SAM-Fed federation (TLS between sites, SuperNode authentication).

- `make_certificates(folder, hosts)`: a private CA plus a SuperLink server certificate signed by it,
  valid for the given host names / IP addresses. Good for tests and for a pilot between two sites;
  a production deployment uses certificates from the hospital's own PKI (same three files).
- `certificate_hosts(cert)`: the names and addresses a certificate is valid for.
- `make_node_key(folder, name)`: an ECDSA P-384 key pair in OpenSSH format, the format
  `flower-supernode --auth-supernode-private-key` and `flwr supernode register` expect.

Torch-free; needs `cryptography` (a dependency of flwr).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA certificate (given to nodes and to `flwr`) and the SuperLink's cert/key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode's key pair (OpenSSH format): the private key stays on the node."""

    private_key: Path
    public_key: Path


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


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


def make_certificates(
    folder: str | Path, hosts: list[str] | None = None, days: int = 30, common_name: str = "samfed-superlink"
) -> TlsFiles:
    """Write ca.pem, server.pem and server.key into `folder` (default hosts: localhost, 127.0.0.1)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hosts = hosts or ["localhost", "127.0.0.1"]
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = _name("samfed-test-ca")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    files = TlsFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(
        files.server_key,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    return files


def certificate_hosts(path: str | Path) -> set[str]:
    """Host names and IP addresses a PEM certificate is valid for (its subject alternative names);
    ValueError when the file is not a PEM certificate."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {*names.get_values_for_type(x509.DNSName), *map(str, names.get_values_for_type(x509.IPAddress))}


def make_node_key(folder: str | Path, name: str = "node") -> NodeKey:
    """Write `<name>` (private, OpenSSH) and `<name>.pub` into `folder`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    out = NodeKey(folder / name, folder / f"{name}.pub")
    _write_private(
        out.private_key,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
    )
    out.public_key.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        + f" {name}\n".encode()
    )
    return out


def main(argv: list[str] | None = None) -> None:
    """python -m samfed.federation.tls DIR [--host NAME ...] [--node-key NAME ...]"""
    import argparse

    ap = argparse.ArgumentParser(
        description="Write a CA + SuperLink certificate and/or node keys (pilots, tests)."
    )
    ap.add_argument("folder", type=Path)
    ap.add_argument(
        "--host", action="append", default=[], help="host name or IP nodes use to reach the server"
    )
    ap.add_argument("--node-key", action="append", default=[], help="write a node key pair with this name")
    args = ap.parse_args(argv)
    if args.host or not args.node_key:
        files = make_certificates(args.folder, ["localhost", "127.0.0.1", *args.host])
        print(f"CA {files.ca_cert} (give it to every node); server cert {files.server_cert}")
    for name in args.node_key:
        key = make_node_key(args.folder, name)
        print(f"node key {key.private_key} (stays on the node); {key.public_key} goes to the server")


if __name__ == "__main__":
    main()
