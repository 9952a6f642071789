"""`samfed view` (torch-free: the edge runtime, Starlette and uvicorn only)."""

from __future__ import annotations

import errno
import ipaddress
import socket
from pathlib import Path
from typing import Annotated

import typer

from samfed.commands.predict import ModelPrecision, TrustedKeys
from samfed.commands.renamed import Renamed
from samfed.errors import SamfedError

LOOPBACK_HOSTNAMES = ("localhost",)
RENAMED = Renamed(flags={"--precision": "--model-precision"})


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine only (127.0.0.0/8, ::1 or 'localhost')."""
    if host.lower() in LOOPBACK_HOSTNAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one); SamfedError saying why not."""
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise SamfedError(f"--host {host} is not an address or name of this machine.") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise SamfedError(
                f"Port {port} on {host} is in use; choose another --port (0: any free one)."
            ) from None
        raise SamfedError(f"Cannot listen on {host} port {port}: {exc.strerror or exc}.") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def view(
    model: Annotated[
        Path, typer.Argument(help="Export folder with manifest.json (from `samfed export`), or a .onnx file.")
    ],
    port: Annotated[int, typer.Option("--port", help="TCP port (0: any free port).")] = 8765,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; other than 127.0.0.1 needs --allow-remote.")
    ] = "127.0.0.1",
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote", help="Allow a --host reachable from other machines (no authentication!)."
        ),
    ] = False,
    folder: Annotated[
        Path | None, typer.Option("--folder", help="A `samfed predict --out` folder to browse as a gallery.")
    ] = None,
    backend: Annotated[str, typer.Option("--backend", help="auto, onnxruntime or openvino.")] = "auto",
    model_precision: ModelPrecision = "auto",
    threads: Annotated[
        int | None, typer.Option("--threads", help="Inference threads (default: all usable CPUs).")
    ] = None,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", help="Largest accepted upload in MB.")
    ] = 32.0,
    trusted_key: TrustedKeys = None,
) -> None:
    """Open a local web viewer: drop images, see the predicted lesion, browse a predict folder.

    Runs torch-free on the edge runtime. Uploads are analysed in memory and never written to disk.
    The viewer listens on 127.0.0.1 only unless --host and --allow-remote say otherwise; stop it
    with Ctrl-C. Not a medical device; research use only.
    """
    import warnings

    import uvicorn
    from rich.console import Console

    from edge.predictor import Predictor
    from edge.viewer.app import LOOPBACK_NAMES, create_app
    from edge.viewer.gallery import open_gallery

    console, err = Console(), Console(stderr=True)
    if not 0 <= port < 65536:
        raise SamfedError(f"--port {port} is not a TCP port (0-65535).")
    if threads is not None and threads < 1:
        raise SamfedError("--threads must be at least 1.")
    if not 0 < max_upload_mb <= 1024:
        raise SamfedError(f"--max-upload-mb must be above 0 and at most 1024, got {max_upload_mb:g}.")
    remote = not is_loopback(host)
    if remote and not allow_remote:
        raise SamfedError(
            f"--host {host} makes the viewer reachable from other machines, without authentication; "
            "pass --allow-remote as well if that is intended."
        )
    gallery = open_gallery(folder) if folder is not None else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor = Predictor.from_model(model, backend, model_precision, threads, 1, trusted_key or ())
    for w in caught:
        err.print(f"[yellow]warning:[/] {w.message}", highlight=False)
    man = predictor.manifest
    if man is not None and not man.signer:
        err.print(
            "[yellow]note:[/] the export is not signed: its files are intact, but who produced it is not "
            "verified (pass --trusted-key to require a signature).",
            highlight=False,
        )
    sock = bind(host, port)
    if remote:
        err.print(
            f"[bold yellow]warning:[/] listening on {host}: anyone who can reach this machine can use the "
            "viewer and see the gallery, without a password; prefer 127.0.0.1 with an SSH tunnel.",
            highlight=False,
        )
    app = create_app(
        predictor,
        gallery,
        max_upload_bytes=int(max_upload_mb * 2**20),
        allowed_hosts=None if remote else LOOPBACK_NAMES,
    )
    prec = f" {man.artefacts[predictor.artefact].precision.upper()}" if man is not None else ""
    rows = f", gallery of {len(gallery.rows)} results from {folder}" if gallery is not None else ""
    console.print(
        f"samfed view: model {predictor.artefact} on {predictor.session.backend}{prec} "
        f"({predictor.session.threads} threads){rows}",
        highlight=False,
    )
    console.print(f"open {url_of(sock)}  (Ctrl-C to stop)", highlight=False, soft_wrap=True)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        limit_concurrency=32,
        timeout_keep_alive=5,
        server_header=False,
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
