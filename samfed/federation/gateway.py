"""Fleet gateway: the one door from the sites to the federation server.

Flower 1.42's SuperLink serves three HTTP APIs on one port: Fleet (SuperNodes pull and push
messages), Control (the `flwr` CLI lists, stops and starts runs: the operator's console) and
Runtime (the ServerApp's own API). samfed runs the SuperLink on loopback only and puts this
gateway on the address the sites dial. It terminates TLS with the server certificate and forwards
a request to the loopback SuperLink only when it is `POST /v1/fleet/<name>` written exactly so (no
query, no percent-escapes, no dot segments, no absolute URL); everything else (Control, Runtime,
docs, other methods) is answered by the gateway itself with 404 or 405 and never reaches Flower.

Forwarded as they are: the body (bytes, at most `max_body` bytes, else 413) and the headers
Flower's node authentication and version check read (`flwr-*`, content type, accept); the reply
keeps its status, body, content type and `flwr-*` headers. When the SuperLink cannot be reached
the gateway answers 502, which SuperNodes retry.

Run as its own process (`samfed serve` does this):
    python -m samfed.federation.gateway --host 0.0.0.0 --port 9092 --upstream-port 40123 \
        --certfile server.pem --keyfile server.key --ca-cert ca.pem
Torch-free; needs uvicorn (with h11) and httpx, both dependencies of flwr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

FLEET_PATH = re.compile(r"/v1/fleet/[a-z][a-z0-9-]{0,63}")
MAX_BODY_BYTES = 64 * 1024 * 1024  # Flower chunks arrays at 5 MiB; a request is one chunk + framing
FORWARD_REQUEST = ("content-type", "accept")
FORWARD_RESPONSE = ("content-type",)
FLWR_PREFIXES = ("flwr-", "x-flwr-")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class BodyTooLarge(Exception):
    """The request body exceeds the gateway's limit."""


def refusal(method: str, path: str, raw_path: bytes, query: bytes) -> int | None:
    """HTTP status that refuses the request, or None when it may go to the SuperLink.

    Allowed: method POST, no query string, and a raw request path that is exactly
    `/v1/fleet/<name>` (name: lower-case letters, digits, dashes) and equal to its decoded form.
    """
    try:
        raw = raw_path.decode("ascii")
    except UnicodeDecodeError:
        return 404
    if query or raw != path or not FLEET_PATH.fullmatch(raw):
        return 404
    if method != "POST":
        return 405
    return None


def _flower_header(name: str, allowed: tuple[str, ...]) -> bool:
    return name in allowed or name.startswith(FLWR_PREFIXES)


def request_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """The request headers the SuperLink needs (lower-case names), others dropped."""
    out = []
    for k, v in headers:
        name = k.decode("latin-1").lower()
        if _flower_header(name, FORWARD_REQUEST):
            out.append((name, v.decode("latin-1")))
    return [*out, ("accept-encoding", "identity")]


def response_headers(headers: list[tuple[str, str]], length: int) -> list[tuple[bytes, bytes]]:
    """The reply headers passed back to the node, with the body length."""
    out = [
        (k.lower().encode("latin-1"), v.encode("latin-1"))
        for k, v in headers
        if _flower_header(k.lower(), FORWARD_RESPONSE)
    ]
    return [*out, (b"content-length", str(length).encode())]


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body; BodyTooLarge as soon as it passes `limit` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Send a complete response; without `headers` a plain-text one."""
    if headers is None:
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
        ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def refuse(send: Send, status: int) -> None:
    """404 (not a Fleet path) or 405 (a Fleet path, but not POST), answered by the gateway itself."""
    body = b"not found" if status == 404 else b"method not allowed"
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    if status == 405:
        headers.append((b"allow", b"POST"))
    await respond(send, status, body, headers)


class FleetGateway:
    """ASGI app forwarding the Fleet API (and nothing else) to `upstream` (http[s]://127.0.0.1:P)."""

    def __init__(
        self,
        upstream: str,
        verify: ssl.SSLContext | bool = True,
        max_body: int = MAX_BODY_BYTES,
        timeout: float = 120.0,
        parent_pid: int | None = None,
    ):
        self.upstream = upstream.rstrip("/")
        self.verify, self.max_body, self.timeout = verify, max_body, timeout
        self.parent_pid = parent_pid
        self.client = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        elif scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})

    async def lifespan(self, receive: Receive, send: Send) -> None:
        import httpx

        watch = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.client = httpx.AsyncClient(verify=self.verify, timeout=self.timeout, trust_env=False)
                if self.parent_pid:
                    watch = asyncio.create_task(self.watch_parent())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if watch is not None:
                    watch.cancel()
                if self.client is not None:
                    await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def watch_parent(self) -> None:
        """Stop this gateway (SIGTERM to itself) once the process that started it is gone."""
        while True:
            await asyncio.sleep(2.0)
            try:
                os.kill(self.parent_pid, 0)
            except ProcessLookupError:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            except PermissionError:  # alive, owned by someone else
                pass

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        import httpx

        status = refusal(scope["method"], scope["path"], scope.get("raw_path") or b"", scope["query_string"])
        if status is not None:
            await refuse(send, status)
            return
        try:
            body = await read_body(receive, self.max_body)
        except BodyTooLarge:
            await respond(send, 413, b"request body too large")
            return
        except ConnectionError:
            return
        try:
            reply = await self.client.post(
                self.upstream + scope["path"], content=body, headers=request_headers(scope["headers"])
            )
        except httpx.TimeoutException:
            await respond(send, 504, b"the SuperLink did not answer in time")
            return
        except httpx.HTTPError:
            await respond(send, 502, b"the SuperLink is not reachable")
            return
        content = reply.content
        await respond(
            send, reply.status_code, content, response_headers(list(reply.headers.items()), len(content))
        )


def upstream_verify(ca_cert: str | None) -> ssl.SSLContext | bool:
    """TLS verification of the loopback SuperLink: its CA when given, else plain HTTP (False)."""
    if ca_cert is None:
        return False
    return ssl.create_default_context(cafile=ca_cert)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Forward only the Flower Fleet API to a loopback SuperLink.")
    ap.add_argument("--host", required=True, help="address the sites connect to (e.g. 0.0.0.0)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream-port", type=int, required=True, help="the SuperLink's port on 127.0.0.1")
    ap.add_argument("--certfile", help="server certificate (PEM); with --keyfile: TLS to the sites")
    ap.add_argument("--keyfile", help="server private key (PEM)")
    ap.add_argument("--ca-cert", help="CA that signed the SuperLink's certificate (TLS on loopback)")
    ap.add_argument("--max-body-mb", type=float, default=MAX_BODY_BYTES / 2**20)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the SuperLink")
    ap.add_argument("--parent-pid", type=int, help="exit when this process is gone")
    args = ap.parse_args(argv)
    if (args.certfile is None) != (args.keyfile is None):
        ap.error("--certfile and --keyfile go together")
    if (args.certfile is None) != (args.ca_cert is None):
        ap.error("TLS needs --certfile, --keyfile and --ca-cert (the SuperLink uses the same certificate)")
    return args


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = parse_args(argv)
    scheme = "https" if args.ca_cert else "http"
    app = FleetGateway(
        f"{scheme}://127.0.0.1:{args.upstream_port}",
        verify=upstream_verify(args.ca_cert),
        max_body=int(args.max_body_mb * 2**20),
        timeout=args.timeout,
        parent_pid=args.parent_pid,
    )
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            http="h11",
            ws="none",
            lifespan="on",
            ssl_certfile=args.certfile,
            ssl_keyfile=args.keyfile,
            proxy_headers=False,
            server_header=False,
            limit_concurrency=128,
            timeout_keep_alive=30,
            log_level="info",
        )


if __name__ == "__main__":
    main()
