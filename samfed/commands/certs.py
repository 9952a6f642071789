"""`samfed certs init|add-node|renew|show`: the federation's CA, server certificate and node keys.

One folder (see `samfed.federation.tls`) holds them on the server machine; `samfed serve --tls-certs
DIR --node-key DIR/nodes` uses it as it is. The CA's private key stays in it (0600), so adding a
clinic or renewing the server certificate never changes the ca.pem the clinics already hold.
Nothing that exists is replaced without --force (renew keeps the old pair in DIR/retired/).
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from samfed.errors import SamfedError
from samfed.federation import tls as T

app = typer.Typer(
    help="Certificates and node keys of a federation: a CA kept for later, the server's TLS "
    "certificate, the node keys the server checks.",
    no_args_is_help=True,
)
_out = Console(highlight=False, soft_wrap=True, emoji=False)  # fingerprints hold ":AB:"

OUTGOING = "outgoing"  # DIR/outgoing/NAME/: what to hand to a clinic (its private key, ca.pem)
RETIRED = "retired"


def _opt(help: str, **kw):
    return typer.Option(help=help, **kw)


Hosts = Annotated[
    list[str] | None,
    _opt("Host name or IP address the nodes dial (repeat); localhost and 127.0.0.1 are always added."),
]
Force = Annotated[bool, _opt("Replace files that exist (the nodes then need the new ca.pem).")]


@app.command()
def init(
    folder: Annotated[Path, typer.Argument(help="Certificate folder to create (on the server machine).")],
    host: Hosts = None,
    days: Annotated[int, _opt("Validity of the server certificate in days.")] = T.SERVER_DAYS,
    ca_days: Annotated[int, _opt("Validity of the CA in days (longer: renewals keep ca.pem).")] = T.CA_DAYS,
    force: Force = False,
) -> None:
    """Create the CA (ca.pem, ca.key) and the server certificate (server.pem, server.key)."""
    files = T.make_certificates(folder, _hosts(host), days, ca_days=ca_days, overwrite=force)
    (folder / T.NODES_FOLDER).mkdir(exist_ok=True)
    _out.print(f"CA {files.ca_cert}: give a copy to every node (--tls-ca); its key ca.key stays here (0600)")
    _out.print(f"server certificate {files.server_cert} for {', '.join(_hosts(host))}, {days} days")
    _out.print(f"next: samfed certs add-node {folder} NAME, once per clinic")


def _hosts(extra: list[str] | None) -> list[str]:
    names = [*T.LOOPBACK_HOSTS, *(h.strip() for h in extra or [])]
    if any(not h for h in names):
        raise SamfedError("--host must name a host or an IP address, not an empty string.")
    return list(dict.fromkeys(names))


@app.command("add-node")
def add_node(
    folder: Annotated[Path, typer.Argument(help="Certificate folder made by `samfed certs init`.")],
    name: Annotated[str, typer.Argument(help="The node's name (e.g. clinic-b), also its key file name.")],
    public_key: Annotated[
        Path | None,
        _opt("Register this public key (made at the clinic, e.g. ssh-keygen -t ecdsa -b 384) instead."),
    ] = None,
    out: Annotated[
        Path | None, _opt("Folder for the new private key and a copy of ca.pem (default DIR/outgoing/NAME).")
    ] = None,
    force: Annotated[bool, _opt("Replace a node key of this name.")] = False,
) -> None:
    """Allow one more node: its public key goes into DIR/nodes/ (what `serve --node-key` reads)."""
    T.check_node_name(name)
    ca = T.CaFiles.in_folder(folder).cert
    if not ca.is_file():
        raise SamfedError(f"{folder} has no ca.pem; create it first with `samfed certs init {folder}`.")
    listed = folder / T.NODES_FOLDER / f"{name}.pub"
    if public_key is not None:
        line = T.check_node_public_key(public_key)
        T.refuse_existing([listed], force)
        listed.parent.mkdir(exist_ok=True)
        T.write_files({listed: (_with_comment(line, name), False)}, overwrite=True)
        _out.print(f"node {name}: {listed} ({T.ssh_fingerprint(line)}); restart samfed serve to admit it")
        return
    bundle = out or folder / OUTGOING / name
    private = bundle / f"{name}.key"
    T.refuse_existing([listed, private, bundle / "ca.pem"], force)
    key, line = T.node_key_pair()
    bundle.mkdir(parents=True, exist_ok=True)
    listed.parent.mkdir(exist_ok=True)
    T.write_files(
        {
            private: (key, True),
            bundle / "ca.pem": (ca.read_bytes(), False),
            listed: (_with_comment(line, name), False),
        },
        overwrite=True,
    )
    _out.print(f"node {name}: {listed} ({T.ssh_fingerprint(line)}); restart samfed serve to admit it")
    _out.print(
        f"hand {bundle} to the clinic over a safe channel (its {private.name} is the node's auth_key, "
        "ca.pem its tls_ca), then delete it here"
    )


def _with_comment(line: bytes, name: str) -> bytes:
    """An OpenSSH public key line `TYPE BASE64 NAME`."""
    return b" ".join(line.split()[:2]) + f" {name}\n".encode()


@app.command()
def renew(
    folder: Annotated[Path, typer.Argument(help="Certificate folder made by `samfed certs init`.")],
    host: Annotated[
        list[str] | None, _opt("Another host name or IP address to list (repeat); the current ones stay.")
    ] = None,
    days: Annotated[int, _opt("Validity of the new server certificate in days.")] = T.SERVER_DAYS,
) -> None:
    """Issue a new server certificate with the kept CA (same ca.pem for the nodes); the old pair
    moves to DIR/retired/."""
    tls = T.TlsFiles.in_folder(folder)
    T.load_ca(folder)  # the CA must be there before anything moves
    hosts = _hosts(host)
    if tls.server_cert.is_file():
        hosts = list(dict.fromkeys([*sorted(T.cert_hosts(T.load_certificate(tls.server_cert))), *hosts]))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    retired = folder / RETIRED
    moved = []
    for path in (tls.server_cert, tls.server_key):
        if path.exists():
            retired.mkdir(exist_ok=True)
            target = retired / f"{path.stem}-{stamp}{path.suffix}"
            T.refuse_existing([target])
            shutil.move(path, target)
            moved.append((target, path))
    try:
        T.issue_server_cert(folder, hosts, days)
    except BaseException:
        for target, path in moved:  # put the old pair back
            shutil.move(target, path)
        raise
    _out.print(f"server certificate {tls.server_cert} renewed for {days} days ({', '.join(hosts)})")
    _out.print("restart samfed serve to use it; the nodes keep their ca.pem")


@app.command()
def show(
    path: Annotated[Path, typer.Argument(help="Certificate folder, a PEM certificate or a .pub node key.")],
) -> None:
    """Print subjects, host names, validity, fingerprints and the node keys the server checks."""
    if path.is_dir():
        _show_folder(path)
    elif path.suffix == ".pub":
        _show_node_key(path)
    elif path.is_file():
        _show_cert(path)
    else:
        raise SamfedError(f"{path} does not exist.")


def _line(text: str) -> None:
    _out.print(escape(text), soft_wrap=True)


def _show_cert(path: Path, issuer=None) -> None:
    """One block per certificate: subject, issuer, SANs, validity, fingerprint, expiry state."""
    cert = T.load_certificate(path)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    left = (end - dt.datetime.now(dt.UTC)).days
    try:
        state = T.check_validity(cert, f"certificate {path}") or "valid"
        state = "[green]valid[/]" if state == "valid" else f"[yellow]{escape(state)}[/]"
    except SamfedError as exc:
        state = f"[red]{escape(str(exc))}[/]"
    _line(f"{path}")
    _line(f"  subject      {cert.subject.rfc4514_string()}")
    _line(f"  issuer       {cert.issuer.rfc4514_string()}")
    hosts = sorted(T.cert_hosts(cert))
    if hosts:
        _line(f"  names (SAN)  {', '.join(hosts)}")
    _line(f"  valid        {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC ({left} days left)")
    _line(f"  SHA-256      {T.fingerprint(cert)}")
    if issuer is not None:
        from cryptography.exceptions import InvalidSignature

        try:
            cert.verify_directly_issued_by(issuer)
            signed = "yes"
        except (InvalidSignature, ValueError, TypeError):
            signed = "[red]NO[/]"
        _out.print(f"  signed by ca.pem: {signed}")
    _out.print(f"  state        {state}")


def _mode(path: Path) -> str:
    mode = path.stat().st_mode & 0o777
    flag = "" if mode & 0o077 == 0 else "  [red]readable by others: chmod 600[/]"
    return f"mode {mode:04o}{flag}"


def _show_node_key(path: Path) -> None:
    line = T.check_node_public_key(path)
    _line(f"  {path.stem:<20} {T.ssh_fingerprint(line)}  ({path})")


def _show_folder(folder: Path) -> None:
    tls, ca = T.TlsFiles.in_folder(folder), T.CaFiles.in_folder(folder)
    if not any(p.is_file() for p in (ca.cert, tls.server_cert)) and not (folder / T.NODES_FOLDER).is_dir():
        raise SamfedError(f"{folder} holds no ca.pem, server.pem or nodes/; is it a certificate folder?")
    ca_cert = None
    if ca.cert.is_file():
        _show_cert(ca.cert)
        ca_cert = T.load_certificate(ca.cert)
    if tls.server_cert.is_file():
        _show_cert(tls.server_cert, issuer=ca_cert)
    for key in (ca.key, tls.server_key):
        if key.is_file():
            _out.print(f"{escape(str(key))}  private key, {_mode(key)}")
        else:
            _line(f"{key}  missing")
    nodes = sorted((folder / T.NODES_FOLDER).glob("*.pub"))
    listed = folder / T.NODES_FOLDER
    _line(f"node keys in {listed} (serve --node-key {listed}): {len(nodes)}")
    for key in nodes:
        _show_node_key(key)
