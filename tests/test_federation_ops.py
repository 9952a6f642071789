"""Running a federation as a hospital IT department would: settings files for `samfed serve` and
`samfed node`, certificates as a verb (`samfed certs`), expiry checks, service recipes.

The fast tests check the files, the certificate folder and the unit files; the slow one runs a
real TLS + node-auth federation (one node, one round) set up only with `samfed certs` and the two
settings files.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import os
import re
import shlex
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import tomli_w

from samfed.config import RunConfig
from samfed.errors import SamfedError
from samfed.federation import processes as fp
from samfed.federation import site_config as sc
from samfed.federation import tls as T
from samfed.federation.options import ServerOptions

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SAMFED = str(Path(sys.executable).with_name("samfed"))
WIDE = {"COLUMNS": "400"}  # rich wraps lines at 80 columns when writing to a file


def _samfed(capsys, *args: str) -> tuple[int, str, str]:
    """`samfed ARGS` in this process (exit code, stdout, stderr), as the console script runs it."""
    import cli

    try:
        cli.main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    got = capsys.readouterr()
    return code, got.out, got.err


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _one_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    assert len(lines) <= 2, text  # one message, wrapped at most once
    assert "Traceback" not in text
    return " ".join(lines)


# ---- settings files ------------------------------------------------------------------------------


def _documented_defaults(path: Path) -> dict[str, object]:
    """The `# key = value` lines of a documented example: the defaults it claims."""
    found = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^# ([a-z_]+) = (.+?)(\s+#.*)?$", line)
        if m:
            found[m[1]] = tomllib.loads(f"v = {m[2]}")["v"]
    return found


@pytest.mark.parametrize(
    ("example", "settings", "load"),
    [
        ("server.example.toml", sc.SERVER, sc.load_server_file),
        ("node.example.toml", sc.NODE, sc.load_node_file),
    ],
)
def test_the_documented_examples_load_and_name_every_setting_with_its_true_default(example, settings, load):
    path = DOCS / example
    parsed = load(path)
    assert not parsed.legacy and parsed.values
    shown = _documented_defaults(path)
    text = path.read_text()
    for name, s in settings.items():
        assert re.search(rf"^(# )?{name} = ", text, re.M), f"{example} does not mention {name}"
        if name in shown and s.default is not None:  # (without a default, the line is an example)
            assert shown[name] == s.default, f"{example} claims {name} = {shown[name]}, default {s.default}"
    if example.startswith("server"):
        assert isinstance(parsed.method, RunConfig) and parsed.method.image_size == 256


def test_round_settings_are_defined_once():
    """The server's round settings default to ServerOptions' own values, and no flag of `serve`
    or `node` carries a default of its own (None: the file, then the setting's default, apply)."""
    from samfed.commands.federation import node, serve

    opts = ServerOptions()
    for name, field in sc.ROUND_SETTINGS.items():
        assert sc.SERVER[name].default == getattr(opts, field), name
    for command, settings in ((serve, sc.SERVER), (node, sc.NODE)):
        params = inspect.signature(command).parameters
        assert set(settings) <= set(params)
        for name in settings:
            assert params[name].default is None, f"{command.__name__} --{name} retypes a default"


def _plain(v):
    """A setting's value as TOML writes it (paths as strings)."""
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return str(v) if isinstance(v, Path) else v


def test_server_and_node_files_round_trip_and_flags_override(tmp_path):
    (tmp_path / "data").mkdir()
    certs = T.make_certificates(tmp_path / "etc" / "certs").ca_cert.parent
    keys = tmp_path / "etc" / "certs" / "nodes"
    T.make_node_key(keys, "clinic-a")
    doc = {
        "out": "runs/study",
        "data": "data",
        "clients": 2,
        "rounds": 3,
        "port": 9200,
        "tls_certs": "etc/certs",
        "node_keys": "etc/certs/nodes",
        "straggler_timeout": 12,
        "method": {"image_size": 64, "students": ["unet-s"], "rounds": 9},
    }
    path = tmp_path / "server.toml"
    path.write_text(tomli_w.dumps(doc))
    file = sc.load_server_file(path)
    assert file.values["out"] == tmp_path / "runs" / "study"  # relative to the file's folder
    assert file.values["node_keys"] == [keys] and file.values["straggler_timeout"] == 12.0
    assert file.method.image_size == 64

    s = sc.resolve(sc.SERVER, {"port": 9300, "rounds": 5, "node_keys": []}, file)
    assert s.port == 9300 and s.origin["port"] == "--port"  # flag over file
    assert s.host == "0.0.0.0" and s.origin["host"] == "default"
    assert s.tls_certs == certs and s.straggler_timeout == 12.0
    assert s.origin["tls_certs"].startswith(str(path))
    assert s.round_timeout == ServerOptions().round_timeout
    from samfed.commands.federation import _new_config

    cfg = _new_config(s, file)
    assert (cfg.image_size, cfg.clients, cfg.rounds, cfg.data) == (64, 2, 5, str(tmp_path / "data"))
    # the resolved settings written back as a file give the same settings
    again = tmp_path / "again.toml"
    values = {k: _plain(v) for k, v in s.values.items() if v is not None}
    method = {k: v for k, v in file.method.to_dict().items() if v is not None}
    again.write_text(tomli_w.dumps({**values, "method": method}))
    assert sc.resolve(sc.SERVER, {}, sc.load_server_file(again)).values == s.values

    node_doc = {"superlink": "server.example.org:9092", "client_id": 1, "data": "data", "threads": 2}
    node_path = tmp_path / "node.toml"
    node_path.write_text(tomli_w.dumps(node_doc))
    n = sc.resolve(sc.NODE, {"threads": 3, "name": "hospital-b"}, sc.load_node_file(node_path))
    assert (n.superlink, n.client_id, n.threads, n.name) == ("server.example.org:9092", 1, 3, "hospital-b")
    assert n.data == tmp_path / "data" and n.connect_timeout == sc.NODE["connect_timeout"].default
    assert n.teacher_variant == "auto"


def _write(tmp_path: Path, text: str, name: str = "server.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("prot = 9092", "unknown server setting(s) prot (did you mean port?)"),
        ('port = "9092"', "setting port must be an integer >= 1 and <= 65535"),
        ("port = 70000", "setting port must be an integer >= 1 and <= 65535"),
        ("connect_timeout = -1", "setting connect_timeout must be a number > 0"),
        ('teacher_format = "gpu"', "unknown teacher_format 'gpu'; choose one of: onnx, torch"),
        ("insecure = 1", "setting insecure must be true or false"),
        ('node_keys = ["a.pub", 3]', "setting node_keys must be a non-empty list"),
        ('host = "0.0.0.0"\nimage_size = 64', "image_size is a method setting; put it under [method]"),
        ('method_config = "run.toml"\n[method]\nseed = 1', "both a [method] table and method_config"),
        (
            "[method]\nimage_sise = 64",
            "[method] has unknown setting(s) image_sise (did you mean image_size?)",
        ),
        ("[method]\nimage_size = 65", "image_size must be an integer >= 32"),
        ("port = ", "is not valid TOML"),
    ],
)
def test_server_file_refuses_bad_input_in_one_line(tmp_path, text, expected):
    with pytest.raises(SamfedError) as err:
        sc.load_server_file(_write(tmp_path, text))
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_node_file_refuses_bad_input_and_missing_paths(tmp_path):
    with pytest.raises(SamfedError, match=r"unknown node setting\(s\) superlnk \(did you mean superlink\?\)"):
        sc.load_node_file(_write(tmp_path, 'superlnk = "a:1"', "node.toml"))
    with pytest.raises(SamfedError, match="setting threads must be an integer >= 1"):
        sc.load_node_file(_write(tmp_path, "threads = 0", "node.toml"))
    node_text = 'data = "images"\nsuperlink = "a:1"\nclient_id = 0\ntls_ca = "ca.pem"'
    path = _write(tmp_path, node_text, "node.toml")
    with pytest.raises(SamfedError) as err:
        sc.resolve(sc.NODE, {}, sc.load_node_file(path))
    assert str(err.value) == f"{path} setting data: {tmp_path / 'images'} does not exist (expected a folder)."
    (tmp_path / "images").mkdir()
    with pytest.raises(SamfedError, match=r"ca.pem does not exist \(expected a file\)"):
        sc.resolve(sc.NODE, {}, sc.load_node_file(path))
    # a flag fixes what the file gets wrong; a missing required setting names flag and file
    (tmp_path / "real-ca.pem").write_text("x")
    s = sc.resolve(sc.NODE, {"tls_ca": tmp_path / "real-ca.pem"}, sc.load_node_file(path))
    assert s.tls_ca == tmp_path / "real-ca.pem"
    with pytest.raises(SamfedError, match=r"Pass --client-id \(or set client_id in the --config file\)"):
        sc.resolve(sc.NODE, {"data": tmp_path, "superlink": "a:1"}, None)
    with pytest.raises(SamfedError, match="--client-id must be an integer >= 0"):
        sc.resolve(sc.NODE, {"data": tmp_path, "superlink": "a:1", "client_id": -1}, None)


def test_the_cli_refuses_a_bad_file_in_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "data").mkdir()
    server = _write(tmp_path, 'out = "run"\ndata = "data"\ninsecure = true\nround_timeout = "1h"\n')
    res = _cli("serve", "--config", str(server))
    assert res.returncode == 1 and "setting round_timeout must be a number > 0" in _one_line(res.stderr)
    assert not (tmp_path / "run").exists()
    node = _write(
        tmp_path, 'data = "data"\nsuperlink = "a:1"\nclient_id = 0\ninsecure = true\nnmae = "x"\n', "n.toml"
    )
    res = _cli("node", "--config", str(node))
    assert res.returncode == 1 and "nmae (did you mean name?)" in _one_line(res.stderr)


def test_serve_config_of_method_settings_only_is_the_deprecated_method_config(tmp_path):
    run = tmp_path / "run.toml"
    RunConfig(image_size=64, rounds=2, data=str(tmp_path)).save(run)
    with pytest.warns(sc.ConfigWarning, match="read as --method-config"):
        file = sc.load_server_file(run)
    assert file.legacy and file.method.image_size == 64 and file.values == {}


# ---- certificates --------------------------------------------------------------------------------


def test_certs_init_add_node_renew_show(tmp_path, capsys):
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    d = tmp_path / "certs"
    code, out, _ = _samfed(
        capsys, "certs", "init", str(d), "--host", "server.example.org", "--host", "10.0.0.5"
    )
    assert code == 0 and "ca.pem" in out
    for name, mode in (("ca.key", 0o600), ("server.key", 0o600), ("ca.pem", 0o644), ("server.pem", 0o644)):
        assert (d / name).stat().st_mode & 0o777 == mode, name
    ca, server = T.load_certificate(d / "ca.pem"), T.load_certificate(d / "server.pem")
    server.verify_directly_issued_by(ca)
    assert T.cert_hosts(server) == {"localhost", "127.0.0.1", "server.example.org", "10.0.0.5"}
    now = dt.datetime.now(dt.UTC)
    assert abs((server.not_valid_after_utc - now).days - T.SERVER_DAYS) <= 1
    assert abs((ca.not_valid_after_utc - now).days - T.CA_DAYS) <= 1

    before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    code, _, err = _samfed(capsys, "certs", "init", str(d))
    assert code == 1 and "already exist" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} == before  # nothing replaced

    # a clinic added later: its key joins nodes/, the CA and the server certificate stay as they are
    code, out, _ = _samfed(capsys, "certs", "add-node", str(d), "clinic-b")
    assert code == 0
    bundle = d / "outgoing" / "clinic-b"
    private = load_ssh_private_key((bundle / "clinic-b.key").read_bytes(), None)
    assert (bundle / "clinic-b.key").stat().st_mode & 0o777 == 0o600
    assert (bundle / "ca.pem").read_bytes() == before["ca.pem"]
    line = T.check_node_public_key(d / "nodes" / "clinic-b.pub")
    from cryptography.hazmat.primitives import serialization

    assert (
        line.split()[:2]
        == private.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .split()
    )
    code, _, err = _samfed(capsys, "certs", "add-node", str(d), "clinic-b")
    assert code == 1 and "already exist" in err
    # a key made at the clinic: only the public half travels
    own = T.make_node_key(tmp_path / "clinic-c", "mykey")
    code, _, _ = _samfed(capsys, "certs", "add-node", str(d), "clinic-c", "--public-key", str(own.public_key))
    assert (
        code == 0
        and T.check_node_public_key(d / "nodes" / "clinic-c.pub").split()[:2]
        == (own.public_key.read_bytes().split()[:2])
    )
    (tmp_path / "rsa.pub").write_text("ssh-rsa AAAAB3NzaC1yc2E= x\n")
    code, _, err = _samfed(
        capsys, "certs", "add-node", str(d), "clinic-d", "--public-key", str(tmp_path / "rsa.pub")
    )
    assert code == 1 and "not an OpenSSH ECDSA P-384 public key" in err
    code, _, err = _samfed(capsys, "certs", "add-node", str(d), "../evil")
    assert code == 1 and "cannot name a node" in err
    assert T.node_public_keys([d / "nodes"]) == [d / "nodes" / "clinic-b.pub", d / "nodes" / "clinic-c.pub"]
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} == before

    # renewal: a new server certificate from the kept CA, same names, ca.pem untouched
    code, _, _ = _samfed(capsys, "certs", "renew", str(d), "--days", "400")
    assert code == 0 and (d / "ca.pem").read_bytes() == before["ca.pem"]
    renewed = T.load_certificate(d / "server.pem")
    renewed.verify_directly_issued_by(ca)
    assert T.cert_hosts(renewed) == T.cert_hosts(server) and renewed.serial_number != server.serial_number
    assert sorted(p.suffix for p in (d / "retired").iterdir()) == [".key", ".pem"]

    code, out, _ = _samfed(capsys, "certs", "show", str(d))
    assert code == 0
    assert T.fingerprint(ca) in out and T.fingerprint(renewed) in out, out
    assert "server.example.org" in out and "10.0.0.5" in out and "signed by ca.pem: yes" in out
    assert T.ssh_fingerprint(line) in out and "node keys in" in out and ": 2" in out
    assert "mode 0600" in out and "readable by others" not in out
    code, out, _ = _samfed(capsys, "certs", "show", str(bundle / "ca.pem"))
    assert code == 0 and T.fingerprint(ca) in out and "samfed federation CA" in out


def test_a_server_certificate_never_outlives_its_ca(tmp_path):
    with pytest.raises(SamfedError, match="cannot outlive the CA"):
        T.make_certificates(tmp_path / "a", days=100, ca_days=50)
    assert not (tmp_path / "a").exists()
    T.make_certificates(tmp_path / "b", days=10, ca_days=50)
    with pytest.raises(SamfedError, match="would outlive the CA"):
        T.issue_server_cert(tmp_path / "b", days=60, overwrite=True)


def test_serve_reads_node_keys_from_a_folder_and_checks_them(tmp_path):
    from samfed.commands.federation import _node_keys

    certs = T.make_certificates(tmp_path / "certs").ca_cert.parent
    (certs / "nodes").mkdir()
    with pytest.raises(SamfedError, match="holds no .pub file"):
        _node_keys([certs / "nodes"], certs)
    T.make_node_key(certs / "nodes", "clinic-a")
    with pytest.warns(sc.ConfigWarning, match="node authentication is off"):
        assert _node_keys(None, certs) == []
    assert _node_keys([certs / "nodes"], certs) == [certs / "nodes" / "clinic-a.pub"]
    (certs / "nodes" / "broken.pub").write_text("not a key\n")
    with pytest.raises(SamfedError, match="broken.pub is not an OpenSSH ECDSA P-384"):
        _node_keys([certs / "nodes"], certs)


# ---- expiry --------------------------------------------------------------------------------------


def _expired(folder: Path) -> T.TlsFiles:
    """A CA and server certificate that expired 10 days ago."""
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    return T.make_certificates(folder, list(T.LOOPBACK_HOSTS), days=30, ca_days=30, valid_from=start)


def test_expiry_check_warns_a_month_ahead_and_refuses_expired(tmp_path):
    soon = T.make_certificates(tmp_path / "soon", days=5)
    warning = T.check_validity(soon.server_cert, "server certificate")
    assert warning and "(4 day(s) left)" in warning and "samfed certs renew" in warning
    assert T.check_validity(soon.ca_cert, "CA certificate") is None  # the CA: 10 years
    month = T.make_certificates(tmp_path / "month", days=30)  # warned a month ahead, not earlier
    assert T.check_validity(month.server_cert, "x") and not T.check_validity(
        month.server_cert, "x", warn_days=29
    )
    old = _expired(tmp_path / "old")
    with pytest.raises(SamfedError, match="expired on .* UTC; renew it with `samfed certs renew`"):
        T.check_validity(old.server_cert, "server certificate")
    future = T.make_certificates(
        tmp_path / "future", valid_from=dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    )
    with pytest.raises(SamfedError, match="valid only from .* check this machine's clock"):
        T.check_validity(future.ca_cert, "CA certificate")


def test_serve_and_node_warn_in_one_yellow_line_and_refuse_expired_certificates(tmp_path):
    from samfed.data.synth import write_synthetic

    data = write_synthetic("polyp", 2, tmp_path / "data", seed=0, size=32)
    soon = T.make_certificates(tmp_path / "soon", days=5)
    with socket.socket() as busy:  # the start stops at the busy port, after the certificate checks
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = _cli(
            "serve", "--out", str(tmp_path / "a"), "--data", str(data), "--tls-certs",
            str(soon.ca_cert.parent), "--host", "127.0.0.1", "--port", str(port),
        )  # fmt: skip
    warnings = [x for x in res.stderr.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and "server certificate" in warnings[0] and "day(s) left" in warnings[0]
    assert "in use" in res.stderr and res.returncode == 1

    old = _expired(tmp_path / "old")
    res = _cli(
        "serve", "--out", str(tmp_path / "b"), "--data", str(data), "--tls-certs", str(old.ca_cert.parent)
    )
    assert res.returncode == 1 and "expired on" in _one_line(res.stderr)
    node = ["node", "--data", str(data), "--superlink", f"127.0.0.1:{fp.free_port()}", "--client-id", "0"]
    res = _cli(*node, "--tls-ca", str(old.ca_cert))
    assert (
        res.returncode == 1 and "The CA certificate" in _one_line(res.stderr) and "expired on" in res.stderr
    )
    short_ca = T.make_certificates(tmp_path / "short-ca", days=5, ca_days=5).ca_cert
    res = _cli(*node, "--tls-ca", str(short_ca), "--connect-timeout", "1", "--work-dir", str(tmp_path / "w"))
    warnings = [x for x in res.stderr.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and "the CA certificate" in warnings[0] and "new ca.pem" in warnings[0]
    assert res.returncode == 1 and "Cannot reach the server" in res.stderr  # the start went on
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _tls_server(cert: T.TlsFiles) -> tuple[int, threading.Thread]:
    """A one-connection TLS server on loopback presenting `cert` (what the node peeks at)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.server_cert, cert.server_key)
    sock = socket.create_server(("127.0.0.1", 0))

    def serve_once() -> None:
        with sock:
            conn, _ = sock.accept()
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve_once, daemon=True)
    thread.start()
    return sock.getsockname()[1], thread


def test_node_refuses_a_server_whose_certificate_expired(tmp_path):
    from samfed.commands.federation import _check_server_certificate

    port, thread = _tls_server(_expired(tmp_path / "old"))
    with pytest.raises(
        SamfedError, match=r"certificate of the server at 127.0.0.1:\d+ expired on .* ask the server"
    ):
        _check_server_certificate("127.0.0.1", port)
    thread.join(timeout=10)
    port, thread = _tls_server(T.make_certificates(tmp_path / "soon", days=3))
    with pytest.warns(T.CertificateWarning, match="server at 127.0.0.1"):
        _check_server_certificate("127.0.0.1", port)
    thread.join(timeout=10)


# ---- service recipes -----------------------------------------------------------------------------


def _unit(path: Path) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
    """{key: [values]} of a systemd unit file and its `# install: SRC -> DST` lines."""
    keys: dict[str, list[str]] = {}
    installs = re.findall(r"^# install: (\S+) -> (\S+)$", path.read_text(), re.M)
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            keys.setdefault(k.strip(), []).append(v.strip())
    return keys, installs


def _flags(verb: str) -> set[str]:
    """Every option of `samfed VERB` (what its --help lists)."""
    import typer

    import cli

    command = typer.main.get_command(cli.app).commands[verb]
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}


def _check_command(argv: list[str], installs: list[tuple[str, str]], verb: str) -> Path:
    """The command line starts samfed VERB with flags it has, and --config names the installed
    example; returns that example."""
    assert re.split(r"[\\\\/]", argv[0])[-1] in ("samfed", "samfed.exe") and argv[1] == verb
    flags = [a for a in argv[2:] if a.startswith("--")]
    assert flags and set(flags) <= _flags(verb), set(flags) - _flags(verb)
    config = argv[argv.index("--config") + 1]
    example = {dst: src for src, dst in installs}[config]
    assert (ROOT / example).is_file(), example
    return ROOT / example


@pytest.mark.parametrize(
    ("unit", "verb", "writable"),
    [("samfed-serve.service", "serve", ("out",)), ("samfed-node.service", "node", ("work_dir",))],
)
def test_systemd_units_reference_real_flags_and_the_documented_config_files(unit, verb, writable):
    path = DOCS / "systemd" / unit
    keys, installs = _unit(path)
    assert any(dst == f"/etc/systemd/system/{unit}" and (ROOT / src) == path for src, dst in installs)
    example = _check_command(shlex.split(keys["ExecStart"][0]), installs, verb)
    for key, value in {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "Restart": "on-failure", "KillMode": "mixed", "KillSignal": "SIGTERM", "CapabilityBoundingSet": "",
    }.items():  # fmt: skip
        assert keys.get(key) == [value], key
    assert keys["User"] != ["root"] and "MemoryDenyWriteExecute" not in keys
    # what samfed writes lies in the unit's state directory; everything else is read-only
    state = Path("/var/lib") / keys["StateDirectory"][0]
    file = sc.load_server_file(example) if verb == "serve" else sc.load_node_file(example)
    for name in writable:
        assert file.values[name].is_relative_to(state), (name, file.values[name], state)
    assert f"HOME={state}" in keys["Environment"][0] and keys["WorkingDirectory"] == [str(state)]
    if verb == "serve":
        assert file.values["auto_resume"] is True  # Restart=on-failure continues the run


def test_windows_service_definition_references_real_flags_and_the_node_file():
    path = DOCS / "windows" / "samfed-node.xml.example"
    root = ET.parse(path).getroot()
    installs = re.findall(r"^\s*install: (\S+) -> (\S+)", path.read_text(), re.M)
    argv = [root.findtext("executable"), *root.findtext("arguments").split()]
    _check_command(argv, installs, "node")
    assert root.findtext("stopparentprocessfirst") == "true"  # Ctrl+C reaches samfed first
    assert root.find("onfailure").get("action") == "restart"


def test_federation_doc_points_at_the_shipped_files():
    text = (DOCS / "federation.md").read_text()
    for name in ("server.example.toml", "node.example.toml", "systemd/samfed-serve.service",
                 "systemd/samfed-node.service", "windows/samfed-node.xml.example"):  # fmt: skip
        assert f"docs/{name}" in text and (DOCS / name).is_file(), name
    assert "python -m samfed.federation.tls" not in text  # `samfed certs` replaced it


# ---- a real federation set up with `samfed certs` and the two files ------------------------------


@pytest.mark.slow
def test_certs_and_settings_files_run_a_tls_and_node_auth_federation(tmp_path):
    """`samfed certs init/add-node`, a server.toml (method settings in [method]) and a node.toml,
    nothing else: one node, one round, TLS through the gateway with node authentication. The
    server certificate expires in 20 days, so serve and node each print the warning; a flag
    overrides the file's port."""
    from samfed.data.readers import load_dataset
    from samfed.data.synth import write_synthetic
    from samfed.engine.data import new_split

    data = write_synthetic("polyp", 6, tmp_path / "data", seed=0, size=48)
    method = RunConfig(
        data=str(data), clients=1, image_size=32, rounds=1, server_epochs=1, local_epochs=1, batch_size=4,
        method="fixmatch", teacher_mode="none", labeled_fraction=0.34, val_fraction=0.34, partition="iid",
        threads=1,
    )  # fmt: skip
    new_split(method, load_dataset(data)).save(tmp_path / "split.json")
    for args in (["init", "certs", "--days", "20"], ["add-node", "certs", "clinic-0"]):
        res = subprocess.run(
            [SAMFED, "certs", *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert res.returncode == 0, res.stderr
    port = fp.free_port("127.0.0.1")
    server_doc = {
        "out": "server", "split": "split.json", "host": "127.0.0.1", "port": 1, "tls_certs": "certs",
        "node_keys": "certs/nodes", "connect_timeout": 300, "teacher_format": "torch",
        "method": {k: v for k, v in method.to_dict().items() if v is not None},
    }  # fmt: skip
    node_doc = {
        "superlink": f"127.0.0.1:{port}", "client_id": 0, "name": "clinic-0", "data": "data",
        "split": "split.json", "work_dir": "node-0", "threads": 1, "connect_timeout": 10,
        "tls_ca": "certs/outgoing/clinic-0/ca.pem", "auth_key": "certs/outgoing/clinic-0/clinic-0.key",
    }  # fmt: skip
    (tmp_path / "server.toml").write_text(tomli_w.dumps(server_doc))
    (tmp_path / "node.toml").write_text(tomli_w.dumps(node_doc))
    run_dir = tmp_path / "server"
    with fp.stopping_on_exit():
        serve = fp.start_process(
            "samfed serve",
            [SAMFED, "serve", "--config", str(tmp_path / "server.toml"), "--port", str(port)],
            tmp_path / "serve.log",
            env=WIDE,
        )
        end = time.monotonic() + 120
        while not fp.port_open("127.0.0.1", port) and serve.alive() and time.monotonic() < end:
            time.sleep(0.5)
        assert fp.port_open("127.0.0.1", port), serve.log_tail()
        node = fp.start_process(
            "samfed node",
            [SAMFED, "node", "--config", str(tmp_path / "node.toml")],
            tmp_path / "node.log",
            env=WIDE,
        )
        end = time.monotonic() + 600
        while serve.alive() and time.monotonic() < end:
            time.sleep(1)
        assert serve.popen.wait(timeout=60) == 0, serve.log_tail(30)
        end = time.monotonic() + 120
        while node.alive() and time.monotonic() < end:
            time.sleep(0.5)
        node_code = node.popen.poll()
    serve_log, node_log = serve.log.read_text(), node.log.read_text()
    assert node_code == 0, node_log[-2000:]
    assert "node authentication for 1 key(s)" in serve_log and "finished" in serve_log
    rounds = json.loads((run_dir / "federation" / "rounds.json").read_text())
    assert [r["answered"] for r in rounds] == [["clinic-0"]]
    assert "1 round(s) trained here" in node_log
    assert "warning: the server certificate" in serve_log and "day(s) left" in serve_log
    assert "warning: the certificate of the server at 127.0.0.1" in node_log
    assert RunConfig.load(run_dir / "config.toml").image_size == 32
    assert "Traceback" not in serve_log + node_log
    assert os.path.isfile(run_dir / "state" / "checkpoint.pt")


def test_auto_resume_leaves_a_finished_run_alone(tmp_path):
    """What a service manager restarting `samfed serve` needs: a finished run exits 0 at once."""
    from samfed.commands.federation import _finished

    out = tmp_path / "run"
    (out / "federation").mkdir(parents=True)
    status = out / "federation" / "status.json"
    for text in ("", "[1, 2]", '{"state": "running"}'):
        status.write_text(text)
        assert not _finished(out)
    status.write_text('{"state": "finished", "val_dice": 0.5}')
    (tmp_path / "data").mkdir()
    base = ["serve", "--out", str(out), "--data", str(tmp_path / "data"), "--insecure", "--host", "127.0.0.1"]
    res = _cli(*base, "--port", str(fp.free_port()), "--auto-resume")
    assert res.returncode == 0 and "has finished; nothing to do" in res.stdout, res.stderr
    assert sorted(p.name for p in out.rglob("*")) == ["federation", "status.json"]  # nothing written


def test_serve_live_table_names_every_site_and_its_state():
    from rich.console import Console

    from samfed.commands.federation import _round_line, _sites_table

    status = {"state": "running", "round": 3, "nodes": {"clinic-b": "training", "clinic-a": "done"}}
    console = Console(record=True, width=80)
    console.print(_sites_table(status))
    text = console.export_text()
    assert "round 3" in text and text.index("clinic-a") < text.index("clinic-b")
    assert "training" in text and "done" in text
    rec = {"round": 3, "answered": ["clinic-a"], "missing": ["clinic-b"], "rejected": [], "round_wall_s": 2.5}
    assert _round_line({**rec, "val_dice": 0.7123}) == (
        "round 3: 1 update(s) in 2.5 s, global val Dice 0.712; missing clinic-b"
    )
