"""Run Flower's SuperNode with samfed's round-overhead settings, in this process.

    python -m samfed.federation.supernode /path/to/flower-supernode [flower-supernode arguments]

`processes.supernode_command` starts every SuperNode this way: the first argument names the
`flower-supernode` console script this stands in for (it becomes argv[0], so `ps` shows what runs),
and Flower's SuperNode runs in this process through that script's entry point with the unchanged
arguments. Before that, it

- starts the warm ClientApp executor (`samfed.federation.warm_exec`, where `supported`) in a
  private folder, as a child of this process (so it is part of the SuperNode's process tree and
  exits with it), and puts its `flwr-clientapp` shim first on PATH; Flower's SuperExec then gets
  each message's ClientApp forked from an interpreter that has Flower and torch imported;
- sets FLWR_SUPEREXEC_TASK_POLL_INTERVAL (Flower's own setting: how often SuperExec asks the
  SuperNode for new ClientApp tasks) to `TASK_POLL_S` unless it is set already (`child_env` does
  the same for every process samfed starts);
- shortens the fixed waits of Flower 1.42's SuperNode loop (`flower_tuning.supernode_waits`: the
  idle sleep between empty pulls, the checks for the ClientApp's reply); other Flower versions run
  unchanged.

Torch-free: the SuperNode itself never imports torch.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

from samfed.federation.processes import TASK_POLL_ENV, TASK_POLL_S, flower_bin


class WarmExecutorProcess:
    """The warm executor started for this SuperNode: its folder, socket and process."""

    def __init__(self) -> None:
        from samfed.federation import clientapp_shim, warm_exec

        self.folder = warm_exec.private_dir()
        self.socket = self.folder / warm_exec.SOCKET_NAME
        self.bin = warm_exec.write_shim(self.folder)
        self.env = {
            clientapp_shim.SOCKET_ENV: str(self.socket),
            clientapp_shim.REAL_ENV: flower_bin(clientapp_shim.COMMAND),
        }
        cmd = [sys.executable, "-m", "samfed.federation.warm_exec", "--socket", str(self.socket)]
        cmd += ["--parent-pid", str(os.getpid()), "--owns-folder"]
        self.popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)

    def environ(self, env: dict[str, str]) -> dict[str, str]:
        """`env` with the shim first on PATH and the shim's settings."""
        path = env.get("PATH")
        return {**env, **self.env, "PATH": os.pathsep.join([str(self.bin), *([path] if path else [])])}

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise SystemExit("usage: python -m samfed.federation.supernode FLOWER_SUPERNODE [ARGS...]")
    script, args = argv[0], argv[1:]

    def stop(signum, frame):  # until Flower installs its own handlers: leave through `finally`
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    from samfed.federation import flower_tuning, warm_exec

    os.environ.setdefault(TASK_POLL_ENV, str(TASK_POLL_S))
    warm = None
    try:
        if warm_exec.supported():
            warm = WarmExecutorProcess()
            os.environ.update(warm.environ(dict(os.environ)))
        flower_tuning.supernode_waits()
        from flwr.supernode.cli import flower_supernode

        sys.argv = [script, *args]
        code = flower_supernode()
    finally:
        if warm is not None:
            warm.stop()
    sys.exit(code)


if __name__ == "__main__":
    main()
