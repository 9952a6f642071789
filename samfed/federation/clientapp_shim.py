"""`flwr-clientapp` of a SuperNode with a warm ClientApp executor (`samfed.federation.warm_exec`).

Flower's SuperExec starts `flwr-clientapp` by name from PATH for every message a node receives.
`samfed.federation.supernode` puts a copy of this file, named `flwr-clientapp`, first on the
SuperNode's PATH. It asks the warm executor on the Unix socket named by $SAMFED_WARM_SOCKET to fork
a ClientApp with this command line, environment, working folder and standard streams (passed as file
descriptors), forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT to that child and exits with its exit status
(128 + N for a child killed by signal N).

When the executor cannot be reached, or closes the connection without starting a child, this
process execs the real `flwr-clientapp` ($SAMFED_REAL_CLIENTAPP, else the next one on PATH): the
message is then handled exactly as without samfed, only slower. Once the executor has reported a
child, there is no fallback (that would run the same task twice).

Standard library only and run with `python -S`, so it starts in milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys
import time

SOCKET_ENV = "SAMFED_WARM_SOCKET"
REAL_ENV = "SAMFED_REAL_CLIENTAPP"
COMMAND = "flwr-clientapp"
CONNECT_TIMEOUT_S = 5.0
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


class Unavailable(Exception):
    """The warm executor did not start a child for this request (safe to run the real command)."""


def encode_request(argv: list[str]) -> bytes:
    """Length-prefixed JSON: this process's arguments, working folder and environment."""
    body = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    return struct.pack("!I", len(body)) + body


def exit_status(code: int) -> int:
    """`os.waitstatus_to_exitcode` value -> a process exit status (signal N: 128 + N)."""
    return 128 - code if code < 0 else code


def run_warm(path: str, argv: list[str]) -> int:
    """Have the warm executor at `path` run `flwr-clientapp argv` -> the child's exit status.

    Unavailable when nothing was started."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT_S)
        sock.connect(path)
        msg = encode_request(argv)
        socket.send_fds(sock, [msg[:4]], [0, 1, 2])
        sock.sendall(msg[4:])
        sock.settimeout(None)
        reader = sock.makefile("rb")
        first = reader.readline()
    except OSError as exc:
        sock.close()
        raise Unavailable(exc.strerror or str(exc)) from None
    if not first:
        sock.close()
        raise Unavailable("it refused the request")
    pid = int(json.loads(first)["pid"])

    def forward(signum, frame):
        with contextlib.suppress(OSError):
            os.kill(pid, signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    try:
        last = reader.readline()
    except OSError:
        last = b""
    if last:
        return exit_status(int(json.loads(last)["exit"]))
    # the executor is gone while its child may still run: wait for the child, status unknown
    while _exists(pid):
        time.sleep(0.2)
    return 1


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def real_command() -> str:
    """The real `flwr-clientapp`: $SAMFED_REAL_CLIENTAPP, else the first on PATH that is not this."""
    named = os.environ.get(REAL_ENV)
    if named:
        return named
    here = os.path.dirname(os.path.realpath(__file__))
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(folder, COMMAND)
        if os.path.realpath(folder) != here and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit(f"{COMMAND}: the real {COMMAND} was not found on PATH")


def main(argv: list[str]) -> None:
    path = os.environ.get(SOCKET_ENV)
    if path:
        try:
            code = run_warm(path, argv)
        except Unavailable as exc:
            print(
                f"samfed: warm ClientApp executor unavailable ({exc}); starting {COMMAND}",
                file=sys.stderr,
                flush=True,
            )
        else:
            sys.stdout.flush()
            os._exit(code)
    real = real_command()
    os.execv(real, [real, *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
