"""Who can reach and control the federation, and how its processes start and stop.

Fast tests check the gateway's request filter, the child environment and the run-directory rules;
the slow ones start real Flower processes (SuperLink, Fleet gateway, SuperNodes, `samfed serve` /
`samfed node`) on this machine and stop every one of them by PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from samfed.errors import SamfedError
from samfed.federation import processes as fp
from samfed.federation.gateway import refusal, request_headers, response_headers
from samfed.federation.tls import make_certificates, make_node_key

BIN = str(Path(sys.executable).parent)


# ---- fast ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "raw", "query", "status"),
    [
        ("POST", "/v1/fleet/pull-messages", b"/v1/fleet/pull-messages", b"", None),
        ("POST", "/v1/fleet/push-object", b"/v1/fleet/push-object", b"", None),
        ("GET", "/v1/fleet/pull-messages", b"/v1/fleet/pull-messages", b"", 405),
        ("PUT", "/v1/fleet/pull-messages", b"/v1/fleet/pull-messages", b"", 405),
        ("POST", "/v1/control/list-runs", b"/v1/control/list-runs", b"", 404),
        ("POST", "/v1/control/stop-run", b"/v1/control/stop-run", b"", 404),
        ("POST", "/v1/runtime/get-run", b"/v1/runtime/get-run", b"", 404),
        ("GET", "/docs", b"/docs", b"", 404),
        ("GET", "/openapi.json", b"/openapi.json", b"", 404),
        ("GET", "/health", b"/health", b"", 404),
        ("POST", "/v1/fleet/../control/list-runs", b"/v1/fleet/../control/list-runs", b"", 404),
        ("POST", "/v1/fleet/../control/list-runs", b"/v1/fleet/%2e%2e/control/list-runs", b"", 404),
        ("POST", "/v1/fleet/x/../../control", b"/v1/fleet/x%2F..%2F..%2Fcontrol", b"", 404),
        ("POST", "/v1/fleet/pull-messages", b"/v1/fleet/pull%2Dmessages", b"", 404),
        ("POST", "/v1/fleet/a/b", b"/v1/fleet/a/b", b"", 404),
        ("POST", "//v1/fleet/pull-messages", b"//v1/fleet/pull-messages", b"", 404),
        ("POST", "/v1/fleet/", b"/v1/fleet/", b"", 404),
        ("POST", "/v1/fleet/Pull-Messages", b"/v1/fleet/Pull-Messages", b"", 404),
        ("POST", "/v1/fleet/pull-messages", b"/v1/fleet/pull-messages", b"x=1", 404),
        ("POST", "/v1/fleet/pull-messages/", b"/v1/fleet/pull-messages/", b"", 404),
        ("POST", "http://evil/v1/fleet/pull-messages", b"http://evil/v1/fleet/pull-messages", b"", 404),
        ("POST", "/v1/fleet/\u00e9", "/v1/fleet/\u00e9".encode(), b"", 404),
    ],
)
def test_gateway_lets_through_only_exact_fleet_posts(method, path, raw, query, status):
    assert refusal(method, path, raw, query) == status


def test_gateway_forwards_only_the_headers_flower_reads():
    sent = [
        (b"Content-Type", b"application/protobuf"),
        (b"accept", b"application/protobuf"),
        (b"flwr-public-key", b"cGs="),
        (b"flwr-signature", b"c2ln"),
        (b"flwr-timestamp", b"2026-01-01T00:00:00+00:00"),
        (b"flwr-package-version", b"1.42.0"),
        (b"host", b"evil.example"),
        (b"cookie", b"a=b"),
        (b"authorization", b"Bearer x"),
        (b"x-forwarded-for", b"1.2.3.4"),
        (b"accept-encoding", b"gzip"),
    ]
    got = dict(request_headers(sent))
    assert got == {
        "content-type": "application/protobuf",
        "accept": "application/protobuf",
        "flwr-public-key": "cGs=",
        "flwr-signature": "c2ln",
        "flwr-timestamp": "2026-01-01T00:00:00+00:00",
        "flwr-package-version": "1.42.0",
        "accept-encoding": "identity",
    }
    back = dict(response_headers([("Content-Type", "a/b"), ("server", "x"), ("flwr-version-x", "m")], 7))
    assert back == {b"content-type": b"a/b", b"flwr-version-x": b"m", b"content-length": b"7"}


def test_child_env_turns_telemetry_off_and_finds_flower_without_the_venv(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "1")
    monkeypatch.setenv("FLWR_INTERNAL_GRPC_CONTROL_API", "1")
    env = fp.child_env({"FLWR_TELEMETRY_ENABLED": "1", "X": "y"})
    assert env["FLWR_TELEMETRY_ENABLED"] == "0" and env["X"] == "y"
    assert env["PATH"].split(os.pathsep)[0] == BIN and "FLWR_INTERNAL_GRPC_CONTROL_API" not in env
    # a real started process sees the same, and finds Flower's executables by name on its PATH
    out = tmp_path / "env.json"
    code = (
        "import json, os, shutil, sys; "
        "seen = {'env': dict(os.environ), 'superexec': shutil.which('flower-superexec')}; "
        "json.dump(seen, open(sys.argv[1], 'w'))"
    )
    with fp.stopping_on_exit():
        proc = fp.start_process("probe", [sys.executable, "-c", code, str(out)], tmp_path / "probe.log")
        proc.popen.wait(timeout=60)
    seen = json.loads(out.read_text())
    assert seen["env"]["FLWR_TELEMETRY_ENABLED"] == "0"
    assert seen["superexec"] == str(Path(BIN) / "flower-superexec")


def test_superlink_never_listens_on_a_public_address():
    for host in ("0.0.0.0", "::", "10.1.2.3", "server.example.org"):
        with pytest.raises(ValueError, match="loopback"):
            fp.superlink_command(host, 9092)
    assert fp.superlink_command("127.0.0.1", 9092)[1:5] == ["--host", "127.0.0.1", "--port", "9092"]


def test_addresses():
    assert fp.split_address("server.example.org:9092") == ("server.example.org", 9092)
    assert fp.split_address("[::1]:9092") == ("::1", 9092)
    for bad in ("server", "server:", ":9092", "server:http", "server:70000"):
        with pytest.raises(SamfedError, match="HOST:PORT"):
            fp.split_address(bad)
    assert fp.is_loopback("127.0.0.1") and fp.is_loopback("::1") and fp.is_loopback("localhost")
    assert not fp.is_loopback("0.0.0.0") and not fp.is_loopback("10.0.0.1")


def test_a_failed_start_leaves_a_folder_that_a_rerun_and_resume_accept(tmp_path):
    from samfed.commands.federation import PENDING, _prepare_run_dir
    from samfed.config import RunConfig

    out = tmp_path / "run"
    split = tmp_path / "split.json"
    split.write_text("{}")
    first = RunConfig(data=str(tmp_path), rounds=3)
    cfg, resume = _prepare_run_dir(out, False, lambda: first, split)
    assert not resume and (out / PENDING).is_file() and RunConfig.load(out / "config.toml").rounds == 3
    # what a start that failed before saving round 0 leaves behind
    (out / "teacher").mkdir()
    (out / "teacher" / "teacher.safetensors").write_bytes(b"half")
    (out / "metrics.jsonl").write_text('{"event": "init"}\n')
    (out / "notes.txt").write_text("the operator's own file")

    # a rerun prepares it anew (new settings, no stale teacher or split); the operator's file stays
    cfg, resume = _prepare_run_dir(out, False, lambda: RunConfig(data=str(tmp_path), rounds=5), None)
    assert not resume and RunConfig.load(out / "config.toml").rounds == 5
    assert not (out / "teacher").exists() and not (out / "metrics.jsonl").exists()
    assert not (out / "split.json").exists() and (out / "notes.txt").read_text() == "the operator's own file"

    # --resume of a run that never saved round 0 starts its saved configuration from the beginning
    (out / "teacher").mkdir()
    cfg, resume = _prepare_run_dir(out, True, lambda: first, None)
    assert not resume and cfg.rounds == 5 and not (out / "teacher").exists()

    # once round 0 is saved, the folder is a run: only --resume continues it
    (out / "state").mkdir()
    (out / "state" / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(SamfedError, match="already holds a run"):
        _prepare_run_dir(out, False, lambda: first, None)
    assert _prepare_run_dir(out, True, lambda: first, None)[1] is True

    # a folder samfed serve did not prepare is never taken over
    other = tmp_path / "other"
    other.mkdir()
    first.save(other / "config.toml")
    with pytest.raises(SamfedError, match="already holds a run"):
        _prepare_run_dir(other, False, lambda: first, None)
    with pytest.raises(SamfedError, match="Nothing to resume"):
        _prepare_run_dir(other, True, lambda: first, None)


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_node_gives_up_on_a_closed_port_with_one_line(tmp_path):
    from samfed.data.synth import write_synthetic

    data = write_synthetic("polyp", 2, tmp_path / "data", seed=0, size=32)
    port = fp.free_port()  # nothing listens there
    start = time.monotonic()
    res = _cli(
        "node", "--data", str(data), "--superlink", f"127.0.0.1:{port}", "--client-id", "0", "--insecure",
        "--work-dir", str(tmp_path / "work"), "--connect-timeout", "3",
    )  # fmt: skip
    assert res.returncode != 0 and time.monotonic() - start < 60
    assert "Cannot reach the server" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) <= 2  # one message (wrapped at most once)
    res = _cli("node", "--data", str(data), "--superlink", "nonsense", "--client-id", "0", "--insecure")
    assert res.returncode != 0 and "HOST:PORT" in res.stderr and "Traceback" not in res.stderr


def test_serve_refuses_a_busy_port_a_foreign_address_and_a_certificate_without_loopback(tmp_path):
    import socket

    data = tmp_path / "data"
    data.mkdir()
    bad = make_certificates(tmp_path / "certs", ["server.example.org"])
    res = _cli("serve", "--out", str(tmp_path / "a"), "--data", str(data), "--certs", str(bad.ca_cert.parent))
    assert res.returncode != 0 and "must also list 127.0.0.1" in res.stderr and "Traceback" not in res.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = _cli(
            "serve", "--out", str(tmp_path / "b"), "--data", str(data), "--insecure",
            "--host", "127.0.0.1", "--port", str(port),
        )  # fmt: skip
    assert res.returncode != 0 and f"Port {port}" in res.stderr and "in use" in res.stderr, res.stderr
    res = _cli(
        "serve", "--out", str(tmp_path / "c"), "--data", str(data), "--insecure", "--host", "192.0.2.1"
    )
    assert res.returncode != 0 and "Cannot listen on 192.0.2.1:9092" in res.stderr, res.stderr
    assert not any((tmp_path / x).exists() for x in "abc")  # nothing written


# ---- real processes ------------------------------------------------------------------------------


def _running(h: psutil.Process) -> bool:
    """Alive and not a zombie (is_running checks the creation time: a reused PID is not ours)."""
    try:
        return h.is_running() and h.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cmd(h: psutil.Process) -> str:
    try:
        return " ".join(h.cmdline())
    except psutil.Error:
        return ""


def _trees(procs) -> list[psutil.Process]:
    """Every live process of the started processes' trees (remembered descendants included)."""
    out = {}
    for p in procs:
        p.remember_children()
        for h in p.handles.values():
            if _running(h):
                out[h.pid] = h
    return list(out.values())


def _public_listeners(procs) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening socket not on a loopback address."""
    found = []
    for h in _trees(procs):
        try:
            conns = h.net_connections(kind="inet")
        except psutil.Error:
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN and not fp.is_loopback(c.laddr.ip):
                found.append((h.name(), c.laddr.ip, c.laddr.port))
    return found


def _environments(procs) -> dict[str, dict[str, str]]:
    envs = {}
    for h in _trees(procs):
        try:
            envs[f"{h.pid} {_cmd(h)[:120]}"] = h.environ()
        except psutil.Error:
            continue
    return envs


def _attacker_cannot_control(tmp_path: Path, public: str, ca: Path, run_id: int | None = None) -> None:
    """A `flwr` client holding the CA certificate, pointed at the public port, can neither list,
    stop nor start runs."""
    home = fp.write_flwr_home(tmp_path / "attacker-home", public, ca)
    app = fp.write_app_dir(tmp_path / "attacker-app")
    attempts = {
        "ls": ["ls", fp.CONNECTION, "--format", "json"],
        "stop": ["stop", str(run_id or 1), fp.CONNECTION],
        "run": ["run", str(app), fp.CONNECTION, "--format", "json"],
    }
    for what, args in attempts.items():
        res = fp.flwr_cli(args, home, timeout=120)
        text = res.stdout + res.stderr
        assert res.returncode != 0 or '"success": false' in text, f"flwr {what} got through:\n{text}"
        assert "404" in text or "Not Found" in text, f"flwr {what}: {text[-500:]}"


def _all_stopped(procs, handles: list[psutil.Process]) -> None:
    alive = [_cmd(h)[:120] for h in handles if _running(h)]
    assert not alive, f"still running: {alive}"


@pytest.mark.slow
def test_only_the_fleet_gateway_faces_the_network(tmp_path):
    """--host 0.0.0.0 with TLS: one public socket (the gateway); it forwards Fleet calls, refuses
    Control, Runtime and docs, limits bodies; the operator's loopback `flwr` still works."""
    import ssl

    import httpx

    tls = make_certificates(tmp_path / "certs")
    ca = ssl.create_default_context(cafile=str(tls.ca_cert))
    port = fp.free_port("0.0.0.0")
    handles: list[psutil.Process] = []
    with fp.stopping_on_exit():
        server = fp.start_server("0.0.0.0", port, tmp_path / "fed", tls)
        small = fp.start_process(
            "small gateway",
            fp.gateway_command("127.0.0.1", fp.free_port(), int(server.control.rsplit(":", 1)[1]), tls, 0.01),
            tmp_path / "small.log",
        )
        small_port = int(small.popen.args[small.popen.args.index("--port") + 1])
        fp.wait_for_port(small, "127.0.0.1", small_port)
        time.sleep(2)  # SuperExec is up
        procs = [*server.processes, small]
        handles = _trees(procs)
        assert {(ip, p) for _, ip, p in _public_listeners(procs)} == {("0.0.0.0", port)}
        names = " ".join(_cmd(h) for h in handles)
        assert "flower-superexec" in names and "samfed.federation.gateway" in names
        for name, env in _environments(procs).items():
            assert env.get("FLWR_TELEMETRY_ENABLED") == "0", name
            assert env["PATH"].split(os.pathsep)[0] == BIN, name

        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ca, timeout=30) as c:
            for path in ("/docs", "/openapi.json", "/health"):
                assert c.get(path).status_code == 404, path
            for path in ("/v1/control/list-runs", "/v1/control/stop-run", "/v1/runtime/get-run"):
                r = c.post(path, content=b"", headers={"content-type": "application/protobuf"})
                assert r.status_code == 404 and r.text == "not found", path
            assert c.get("/v1/fleet/get-run").status_code == 405
            fleet = c.post("/v1/fleet/get-run", content=b"", headers={"content-type": "application/protobuf"})
            assert fleet.status_code not in (404, 405) and fleet.text != "not found"  # Flower answered
        with httpx.Client(base_url=f"https://{server.control}", verify=ca, timeout=30) as c:
            assert c.get("/docs").status_code == 200  # what the gateway hides is there on loopback
        with httpx.Client(base_url=f"https://127.0.0.1:{small_port}", verify=ca, timeout=30) as c:
            big = c.post("/v1/fleet/push-object", content=b"x" * 20_000)
            assert big.status_code == 413

        _attacker_cannot_control(tmp_path, f"127.0.0.1:{port}", tls.ca_cert)
        ok = fp.flwr_cli(["ls", fp.CONNECTION, "--format", "json"], server.home, timeout=120)
        assert ok.returncode == 0 and '"success": true' in ok.stdout, ok.stdout + ok.stderr
        handles = _trees(procs)
    _all_stopped(procs, handles)


def _tiny_run(root: Path, rounds: int = 2):
    """8 synthetic images, two clients, a teacher-free federated method at 32 px: the cheapest real run."""
    from samfed.config import RunConfig
    from samfed.data.readers import load_dataset
    from samfed.data.synth import write_synthetic
    from samfed.engine.data import new_split

    data = write_synthetic("polyp", 8, root / "data", seed=0, size=48)
    cfg = RunConfig(
        data=str(data), clients=2, image_size=32, rounds=rounds, server_epochs=1, local_epochs=1,
        batch_size=4, method="fixmatch", teacher_mode="none", labeled_fraction=0.25, val_fraction=0.25,
        partition="iid", threads=1,
    )  # fmt: skip
    split = new_split(cfg, load_dataset(data)).save(root / "split.json")
    cfg.save(root / "run.toml")
    return data, split, root / "run.toml"


SAMFED = str(Path(sys.executable).with_name("samfed"))
BARE_PATH = {"PATH": "/usr/bin:/bin"}  # the venv is not on PATH: samfed is started by its full path


@pytest.mark.slow
def test_federation_through_the_gateway_with_tls_and_node_auth(tmp_path):
    """`samfed serve --host 0.0.0.0` and two `samfed node`s, all started by full path without the
    venv on PATH: the run completes through the gateway; a site's `flwr` cannot list, stop or
    start runs meanwhile; only the gateway listens publicly; telemetry is off everywhere; the
    nodes exit 0 with a summary after the run."""
    data, split, run_toml = _tiny_run(tmp_path)
    tls = make_certificates(tmp_path / "certs")
    keys = [make_node_key(tmp_path / "keys", f"clinic-{k}") for k in range(2)]
    port = fp.free_port("0.0.0.0")
    run_dir = tmp_path / "server"
    seen: dict[int, psutil.Process] = {}
    checked = {}
    with fp.stopping_on_exit():
        serve = fp.start_process("samfed serve", [
            SAMFED, "serve", "--out", str(run_dir), "--config", str(run_toml), "--split", str(split),
            "--host", "0.0.0.0", "--port", str(port), "--certs", str(tls.ca_cert.parent),
            "--node-key", str(keys[0].public_key), "--node-key", str(keys[1].public_key),
            "--connect-timeout", "300",
        ], tmp_path / "serve.log", env=BARE_PATH)  # fmt: skip
        end = time.monotonic() + 120
        while not fp.port_open("127.0.0.1", port) and serve.alive() and time.monotonic() < end:
            time.sleep(0.5)
        assert fp.port_open("127.0.0.1", port), serve.log_tail()
        nodes = [
            fp.start_process(
                f"samfed node {k}",
                [
                    SAMFED,
                    "node",
                    "--data",
                    str(data),
                    "--superlink",
                    f"127.0.0.1:{port}",
                    "--client-id",
                    str(k),
                    "--split",
                    str(split),
                    "--work-dir",
                    str(tmp_path / f"node-{k}"),
                    "--threads",
                    "1",
                    "--ca",
                    str(tls.ca_cert),
                    "--auth-key",
                    str(keys[k].private_key),
                    "--connect-timeout",
                    "10",
                ],
                tmp_path / f"node-{k}.log",
                env=BARE_PATH,
            )  # fmt: skip
            for k in range(2)
        ]
        procs = [serve, *nodes]
        status_file = run_dir / "federation" / "status.json"
        end = time.monotonic() + 600
        while serve.alive() and time.monotonic() < end:
            seen.update({h.pid: h for h in _trees(procs)})
            status = json.loads(status_file.read_text()) if status_file.is_file() else {}
            if status.get("state") == "running" and not checked:
                checked["listeners"] = _public_listeners(procs)
                checked["envs"] = _environments(procs)
                run_id = int(serve.log.read_text().split("Flower run ")[1].split(";")[0])
                _attacker_cannot_control(tmp_path, f"127.0.0.1:{port}", tls.ca_cert, run_id)
            time.sleep(0.5)
        assert serve.popen.wait(timeout=60) == 0, serve.log_tail(30)
        end = time.monotonic() + 120
        while any(n.alive() for n in nodes) and time.monotonic() < end:
            time.sleep(0.5)
        codes = [n.popen.poll() for n in nodes]
    _all_stopped(procs, list(seen.values()))
    assert checked, f"the run never reached state running:\n{serve.log_tail(30)}"
    assert {(ip, p) for _, ip, p in checked["listeners"]} == {("0.0.0.0", port)}, checked["listeners"]
    assert len(checked["envs"]) >= 8  # serve, gateway, SuperLink, SuperExec, ServerApp, 2 x (node, SuperNode)
    for name, env in checked["envs"].items():
        assert env.get("FLWR_TELEMETRY_ENABLED") == "0", name
    assert "finished" in serve.log.read_text()
    rounds = json.loads((run_dir / "federation" / "rounds.json").read_text())
    assert [sorted(r["answered"]) for r in rounds] == [["client-0", "client-1"]] * 2
    assert codes == [0, 0], [n.log_tail() for n in nodes]
    for n in nodes:
        assert "done" in n.log.read_text() and "2 round(s) trained here" in n.log.read_text(), n.log_tail()
    assert not (run_dir / "federation" / "start-pending.json").exists()


@pytest.mark.slow
def test_sigterm_and_sigint_stop_every_process_started(tmp_path):
    """SIGTERM on `samfed serve` and SIGINT on `samfed node` leave no process they started
    (SuperLink, SuperExec and ServerApp run in sessions of their own)."""
    data, split, run_toml = _tiny_run(tmp_path)
    port = fp.free_port()
    seen: dict[int, psutil.Process] = {}
    with fp.stopping_on_exit():
        serve = fp.start_process("samfed serve", [
            SAMFED, "serve", "--out", str(tmp_path / "server"), "--config", str(run_toml),
            "--split", str(split), "--host", "127.0.0.1", "--port", str(port), "--insecure",
            "--connect-timeout", "300",
        ], tmp_path / "serve.log", env=BARE_PATH)  # fmt: skip
        end = time.monotonic() + 120
        while not fp.port_open("127.0.0.1", port) and serve.alive() and time.monotonic() < end:
            time.sleep(0.5)
        node = fp.start_process("samfed node", [
            SAMFED, "node", "--data", str(data), "--superlink", f"127.0.0.1:{port}", "--client-id", "0",
            "--split", str(split), "--work-dir", str(tmp_path / "node-0"), "--threads", "1", "--insecure",
        ], tmp_path / "node.log", env=BARE_PATH)  # fmt: skip

        def cmdlines() -> str:
            return " ".join(_cmd(h) for h in seen.values() if _running(h))

        end = time.monotonic() + 300
        while time.monotonic() < end and not (
            "flwr-serverapp" in cmdlines() and "flower-supernode" in cmdlines()
        ):
            assert serve.alive() and node.alive(), serve.log_tail() + node.log_tail()
            seen.update({h.pid: h for h in _trees([serve, node])})
            time.sleep(0.5)
        assert "flwr-serverapp" in cmdlines() and "flower-superexec" in cmdlines(), cmdlines()
        assert sum("samfed.federation.gateway" in _cmd(h) for h in seen.values()) == 1
        assert (
            len(seen) >= 7
        )  # serve, gateway, SuperLink, SuperExec, ServerApp, node, SuperNode (+ SuperExec)
        os.killpg(node.pid, signal.SIGINT)  # as Ctrl-C in its terminal
        os.killpg(serve.pid, signal.SIGTERM)  # as a service manager stopping it
        assert node.popen.wait(timeout=60) != 0 and serve.popen.wait(timeout=60) != 0
        time.sleep(1)
        survivors = [_cmd(h)[:120] for h in seen.values() if _running(h)]
    assert not survivors, survivors
    assert "Traceback" not in serve.log.read_text() and "Traceback" not in node.log.read_text()


@pytest.mark.slow
def test_a_failed_serve_start_is_accepted_by_a_rerun_and_by_resume(tmp_path):
    """The ServerApp fails before round 0 (its data folder has no images): the same command, and
    `--resume`, start again instead of refusing the folder."""
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "server"
    base = ["serve", "--out", str(out), "--data", str(empty), "--host", "127.0.0.1", "--insecure"]
    for extra in ([], [], ["--resume"]):
        res = _cli(*base, "--port", str(fp.free_port()), *extra, timeout=300)
        assert res.returncode != 0, res.stdout
        assert "The federation stopped" in res.stderr, res.stdout + res.stderr
        assert "already holds a run" not in res.stderr and "Nothing to resume" not in res.stderr
        assert "Traceback" not in res.stderr
    assert (out / "config.toml").is_file() and (out / "federation" / "start-pending.json").is_file()
