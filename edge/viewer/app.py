"""The viewer's web application (Starlette): the page, the model card, segmentation of uploads and
the gallery of a `samfed predict` folder.

Routes (JSON errors are `{"error": one sentence}` with a 4xx status; nothing a request holds can
stop the server):

    GET  /                      the page (static/index.html); /static/* its script and style
    GET  /api/card              the model card (edge.viewer.card)
    POST /api/segment           body: the image file's bytes (never written to disk); header
                                X-Samfed-Viewer: 1 (a cross-site form cannot send it), optional
                                X-File-Name (URL-encoded); answer: the probability map and
                                statistics in edge.viewer.segment's wire format
    GET  /api/gallery           rows of the predict folder (404 without --folder)
    GET  /api/gallery/{kind}?id=ID   overlay or mask PNG of a row, only from inside the folder

Every answer carries a strict Content-Security-Policy (scripts, styles and requests only from this
origin: nothing from the internet) and `Cache-Control: no-store`; requests whose Host header is
not one of `allowed_hosts` are refused (a web page cannot reach the viewer through DNS rebinding).
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from edge.predictor import Predictor
from edge.viewer.card import model_card
from edge.viewer.gallery import KINDS, Gallery
from edge.viewer.segment import pack, segment
from edge.viewer.upload import MAX_PIXELS, BadUpload, decode_upload
from samfed.errors import SamfedError

STATIC = Path(__file__).resolve().parent / "static"
CLIENT_HEADER = "x-samfed-viewer"
MAX_NAME = 200  # characters of an upload's file name kept for messages
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


def host_name(header: str) -> str:
    """The host part of a Host header ('[::1]:8000' -> '::1', 'a:80' -> 'a'), lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else ""
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Guard:
    """ASGI middleware: refuse unknown Host headers (None: any host) and add SECURITY_HEADERS."""

    def __init__(self, app, allowed_hosts: Iterable[str] | None) -> None:
        self.app = app
        self.allowed = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
        if self.allowed is not None and host_name(host) not in self.allowed:
            response = error(400, "This viewer answers only requests addressed to 127.0.0.1 or localhost.")
            await response(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                message = message | {"headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_body(request: Request, limit: int, name: str) -> bytes:
    """The request body, BadUpload(413) as soon as it exceeds `limit` bytes (declared or sent)."""
    declared = request.headers.get("content-length", "")
    too_big = BadUpload(413, f"{name} is larger than the viewer's limit of {limit / 2**20:g} MB.")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def upload_name(request: Request) -> str:
    """The file name the page sent (X-File-Name, URL-encoded), shortened; a generic name without one."""
    name = unquote(request.headers.get("x-file-name", "")).strip()
    name = "".join(c for c in name if c.isprintable())[:MAX_NAME]
    return name or "The upload"


def create_app(
    predictor: Predictor,
    gallery: Gallery | None = None,
    *,
    max_upload_bytes: int = 32 << 20,
    max_pixels: int = MAX_PIXELS,
    allowed_hosts: Iterable[str] | None = LOOPBACK_NAMES,
) -> Guard:
    """The ASGI app serving `predictor` (and `gallery`, when given). One image is segmented at a
    time (the session is not shared between threads; memory stays bounded)."""
    lock = threading.Lock()
    card = model_card(predictor)
    page = (STATIC / "index.html").read_bytes()

    def run_segment(data: bytes, name: str) -> bytes:
        with lock:
            t0, cpu0 = time.perf_counter(), time.process_time()
            image = decode_upload(data, name, max_pixels)
            decode_ms = (time.perf_counter() - t0) * 1e3
            meta, codes = segment(predictor, image, name)
            meta["timing_ms"] |= {
                "decode": round(decode_ms, 2),
                "server": round((time.perf_counter() - t0) * 1e3, 2),
                "server_cpu": round((time.process_time() - cpu0) * 1e3, 2),  # all threads of the process
            }
            return pack(meta, codes)

    async def index(_: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    async def card_route(_: Request) -> Response:
        return JSONResponse(card | {"gallery": gallery is not None, "max_upload_bytes": max_upload_bytes})

    async def segment_route(request: Request) -> Response:
        if request.headers.get(CLIENT_HEADER) != "1":
            return error(403, "Uploads are accepted only from the viewer's own page.")
        try:
            name = upload_name(request)
            data = await read_body(request, max_upload_bytes, name)
            result = await run_in_threadpool(run_segment, data, name)
            return Response(result, media_type="application/octet-stream")
        except BadUpload as exc:
            return error(exc.status, str(exc))
        except SamfedError as exc:  # the model failed on a valid image
            return error(500, str(exc))

    async def gallery_route(_: Request) -> Response:
        if gallery is None:
            return error(404, "No gallery: start the viewer with --folder PREDICT_OUT to browse results.")
        return JSONResponse(gallery.to_json())

    async def gallery_file(request: Request) -> Response:
        kind, image_id = request.path_params["kind"], request.query_params.get("id", "")
        path = gallery.file(kind, image_id) if gallery is not None and kind in KINDS else None
        if path is None:
            return error(404, f"The gallery has no {kind} for {image_id[:MAX_NAME]!r}.")
        return FileResponse(path, media_type="image/png")

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        return error(status, f"{request.method} {request.url.path[:MAX_NAME]} is not part of the viewer.")

    async def server_error(request: Request, exc: Exception) -> Response:
        traceback.print_exception(exc, file=sys.stderr)
        return error(500, f"The viewer failed on this request ({type(exc).__name__}); it keeps running.")

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/favicon.ico", lambda _: Response(status_code=204)),
            Route("/api/card", card_route),
            Route("/api/segment", segment_route, methods=["POST"]),
            Route("/api/gallery", gallery_route),
            Route("/api/gallery/{kind}", gallery_file),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        exception_handlers={404: not_found, 405: not_found, Exception: server_error},
    )
    return Guard(app, allowed_hosts)
