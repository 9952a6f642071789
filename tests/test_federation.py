"""SAM-Fed on real Flower processes: SuperLink + SuperNodes on loopback, faults, resume, TLS.

The slow tests start real `flower-superlink` / `flower-supernode` processes on free loopback
ports and stop every one of them by PID (with all descendants) in a finally block; they share one
in-process reference run and one teacher-map cache, so LiteMedSAM runs once per image.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from safetensors.torch import load_file

from edge.node import RoundMeter, fit_batch_size, thread_env, training_bytes_per_sample
from samfed.config import RunConfig
from samfed.errors import SamfedError
from samfed.federation import protocol as P
from samfed.federation.dp import clip_update, delta_norm, noisy_mean, privacy_spent, require_dp_compatible
from samfed.federation.options import ServerOptions
from samfed.federation.processes import (
    LocalFederation,
    NodeSpec,
    flower_bin,
    free_port,
    start_process,
    write_app_dir,
)
from samfed.federation.tls import make_certificates, make_node_key
from samfed.federation.validation import check_state, validate_updates
from samfed.models import create_student

# ---- fast unit tests ---------------------------------------------------------------------------


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A small GroupNorm-style state dict: conv weight and bias, norm affine, an integer buffer."""
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(16, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(16, generator=g),
        "norm.weight": torch.ones(16),
        "head.weight": torch.randn(1, 16, 1, 1, generator=g),
        "step": torch.tensor(3),
    }


def test_validation_rejects_nan_wrong_shape_keys_and_outliers():
    ref = _state()
    good = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in ref.items()}
    nan = dict(good)
    key = next(k for k, v in ref.items() if v.is_floating_point())
    nan[key] = nan[key].clone()
    nan[key].view(-1)[0] = float("nan")
    shape = {**good, key: torch.zeros(3, 3)}
    keys = {f"extra.{k}": v for k, v in good.items()}
    big = {k: v + 5.0 * torch.randn_like(v) if v.is_floating_point() else v for k, v in ref.items()}
    assert check_state(good, ref) is None
    assert "non-finite" in check_state(nan, ref)
    assert "wrong shape" in check_state(shape, ref)
    assert "wrong keys" in check_state(keys, ref)
    updates = {"a": good, "b": dict(good), "c": dict(good), "d": big, "e": nan}
    accepted, rejected, ratios = validate_updates(updates, dict.fromkeys(updates, ref), outlier_factor=10.0)
    assert sorted(accepted) == ["a", "b", "c"]
    reasons = {r.client: r.reason for r in rejected}
    assert "outlier" in reasons["d"] and "non-finite" in reasons["e"]


def test_reply_check_refuses_anything_but_weights_and_scalars():
    state = _state()
    expected = {k: tuple(v.shape) for k, v in state.items()}
    ok = P.reply_content(state, {"loss": 0.5, "steps": 3}, {"partition-id": 0, "name": "a"})
    assert P.check_reply(ok, expected) is None
    image = RecordDict({P.STATE: P.state_record({"image": torch.zeros(1, 3, 64, 64)})})
    assert "keys" in P.check_reply(image, expected)
    unpacked = RecordDict({P.STATE: ArrayRecord(torch_state_dict=state)})  # one array per tensor
    assert "not a packed state dict" in P.check_reply(unpacked, expected)
    leak = RecordDict({**ok, "maps": ArrayRecord([np.zeros((4, 64, 64), np.float32)])})
    assert "unexpected record" in P.check_reply(leak, expected)
    blob = RecordDict({P.INFO: ConfigRecord({"partition-id": 0, "mask": b"\x00" * 64})})
    assert "non-scalar" in P.check_reply(blob, None)
    series = RecordDict({P.METRICS: MetricRecord({"probs": [0.1, 0.9]})})
    assert "non-scalar" in P.check_reply(series, None)
    with pytest.raises(ValueError):
        P.reply_content(None, {}, {"mask": np.zeros((8, 8))})
    assert dict(P.scalar_metrics({"a": 1.0, "b": float("nan"), "c": [1, 2], "d": np.float32(2)})) == {
        "a": 1.0,
        "d": 2.0,
    }


def _packed(layout: object, data: bytes) -> ArrayRecord:
    text = json.dumps(layout).encode()
    return ArrayRecord(
        {
            P.LAYOUT: Array(np.frombuffer(text, np.uint8).copy()),
            P.PACKED: Array(np.frombuffer(data, np.uint8).copy()),
        }
    )


def test_packed_weights_round_trip_bit_exact_and_malformed_packs_are_refused():
    state = {
        **_state(),
        "half": torch.randn(2, 3).to(torch.bfloat16),
        "flag": torch.tensor([True, False]),
        "empty": torch.zeros(0, 4),
        "view": torch.arange(12.0).reshape(3, 4).t(),  # not contiguous
    }
    record = P.state_record(state)
    assert set(record.keys()) == {P.LAYOUT, P.PACKED}  # two objects on the wire, not one per tensor
    back = P.record_state(record)
    assert list(back) == list(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    described = P.describe(RecordDict({P.STATE: record}))[P.STATE]["arrays"]
    assert described["half"] == {"shape": [2, 3], "dtype": "bfloat16"}
    assert described["conv.weight"]["shape"] == [16, 3, 3, 3]
    bad = [
        (_packed([["w", "float32", [2]]], b"\0" * 4), "describes 8 bytes, 4 were sent"),
        (_packed([["w", "float32", [-1]]], b""), "bad shape"),
        (_packed([["w", "object", [1]]], b"\0" * 8), "bad entry"),
        (_packed([["w", "uint8", [1]], ["w", "uint8", [1]]], b"\0\0"), "bad entry"),
        (_packed({"w": 1}, b""), "not a list"),
        (
            ArrayRecord(
                {
                    P.LAYOUT: Array(dtype="uint8", shape=(2,), stype="raw", data=b"[]"),
                    P.PACKED: Array(np.zeros(0, np.uint8)),
                }
            ),
            "not readable",
        ),
        (
            ArrayRecord(
                {
                    P.LAYOUT: Array(np.frombuffer(b"{[", np.uint8).copy()),
                    P.PACKED: Array(np.zeros(0, np.uint8)),
                }
            ),
            "not JSON",
        ),
        (
            ArrayRecord({P.LAYOUT: Array(np.zeros(2, np.float32)), P.PACKED: Array(np.zeros(0, np.uint8))}),
            "1-D uint8",
        ),
    ]
    for rec, match in bad:
        with pytest.raises(ValueError, match=match):
            P.record_state(rec)
        assert match in P.check_reply(RecordDict({P.STATE: rec}), {"w": (2,)})


def test_dp_clip_noise_budget_and_groupnorm_requirement():
    ref = _state(0)
    upd = {k: v + torch.randn_like(v) if v.is_floating_point() else v for k, v in ref.items()}
    clipped, norm = clip_update(upd, ref, 1.0)
    assert norm > 1.0 and delta_norm(clipped, ref) == pytest.approx(1.0, rel=1e-5)
    g = torch.Generator().manual_seed(0)
    mean = noisy_mean(ref, [clipped, clipped], clip=1.0, noise_multiplier=0.0, generator=g)
    assert delta_norm(mean, ref) == pytest.approx(1.0, rel=1e-5)
    noisy = noisy_mean(ref, [clipped, clipped], clip=1.0, noise_multiplier=1.0, generator=g)
    assert delta_norm(noisy, clipped) > 0.1
    eps1, eps10 = privacy_spent(1, 1.0, 1e-5), privacy_spent(10, 1.0, 1e-5)
    assert 0 < eps1 < eps10 < privacy_spent(10, 0.5, 1e-5)
    # closed form for one Gaussian round: min over alpha of alpha/(2 s^2) + log(1/d)/(alpha-1)
    s, d = 2.0, 1e-5
    alpha = 1 + np.sqrt(2 * s**2 * np.log(1 / d))
    assert privacy_spent(1, s, d) == pytest.approx(alpha / (2 * s**2) + np.log(1 / d) / (alpha - 1), rel=0.02)
    with pytest.raises(SamfedError, match="GroupNorm"):
        require_dp_compatible("batch", "fedavg")
    bn = {**_state(), "norm.running_mean": torch.zeros(16), "norm.running_var": torch.ones(16)}
    with pytest.raises(SamfedError, match="GroupNorm"):
        require_dp_compatible("group", "fedavg", bn)


def test_node_helpers_cap_batch_and_measure(tmp_path):
    model = create_student("unet-s", norm="batch")
    per_sample, fixed = training_bytes_per_sample(model, 64)
    assert per_sample > 64 * 64 * 4 and fixed > 0
    assert fit_batch_size(8, per_sample, fixed, budget=10**12) == 8
    assert fit_batch_size(8, per_sample, fixed, budget=fixed + 2 * 2 * per_sample) == 2
    assert fit_batch_size(8, per_sample, fixed, budget=0) == 1
    assert thread_env(2)["OMP_NUM_THREADS"] == "2" and thread_env(None) == {}
    with RoundMeter() as m:
        sum(range(10000))
    assert m.wall_s >= 0 and m.peak_rss_mb >= m.rss_start_mb * 0.5 > 0


def test_options_and_app_project(tmp_path):
    opts = ServerOptions(run_dir="/x", resume=True, min_clients=2, dp_clip=0.5)
    back = ServerOptions.from_run_config({**opts.to_run_config(), "resume": "false"})
    assert back.min_clients == 2 and back.dp_clip == 0.5 and back.resume is False
    import tomllib

    from flwr.common.config import validate_fields_in_config

    app = write_app_dir(tmp_path / "app")
    doc = tomllib.loads((app / "pyproject.toml").read_text())
    assert doc["tool"]["flwr"]["app"]["components"]["clientapp"] == "samfed.federation.client_app:app"
    assert set(ServerOptions.defaults()) <= set(doc["tool"]["flwr"]["app"]["config"])
    ok, errors, _ = validate_fields_in_config(doc)
    assert ok, errors


def test_tls_material_loads(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    files = make_certificates(tmp_path, ["server.example.org"])
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "server.example.org" in names.get_values_for_type(x509.DNSName)
    key = make_node_key(tmp_path, "clinic")
    assert load_ssh_private_key(key.private_key.read_bytes(), None).curve.name == "secp384r1"
    assert load_ssh_public_key(key.public_key.read_bytes()).curve.name == "secp384r1"
    assert oct(key.private_key.stat().st_mode)[-3:] == "600"


def test_cli_refuses_unsafe_or_impossible_setups(tmp_path):
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=300
        )

    data = tmp_path / "data"
    data.mkdir()
    res = cli("serve", "--out", str(tmp_path / "a"), "--data", str(data))
    assert res.returncode == 1 and "--insecure" in res.stderr and "Traceback" not in res.stderr
    res = cli("serve", "--out", str(tmp_path / "b"), "--data", str(data), "--insecure", "--dp-clip", "1")
    assert res.returncode == 1 and "GroupNorm" in res.stderr, res.stderr
    res = cli("node", "--data", str(data), "--superlink", "127.0.0.1:1", "--client-id", "0")
    assert res.returncode == 1 and "--tls-ca" in res.stderr


@pytest.mark.slow
def test_node_teacher_maps_match_the_runner_and_are_reused_without_the_weights(tmp_path):
    from samfed.data.readers import load_dataset
    from samfed.data.synth import write_synthetic
    from samfed.engine.teacher import compute_maps
    from samfed.federation.client_app import NodeSettings, node_data, node_teacher_maps
    from samfed.teacher import load_teacher, save_teacher

    data = write_synthetic("polyp", 1, tmp_path / "data", seed=3, size=64)
    teacher = load_teacher("litemedsam", prompt="none")
    ref_digest = "0123456789abcdef" * 2  # a content digest, as the server sends it
    folder = tmp_path / "work" / "assets" / ref_digest
    save_teacher(teacher, folder)
    (folder / ".complete").write_text(ref_digest)
    node = NodeSettings.from_node_config(
        {"data-path": str(data), "partition-id": 0, "work-dir": str(tmp_path / "work")}
    )
    cfg, spec = RunConfig(image_size=64), {"teacher-kind": "torch", "teacher-ref": ref_digest}
    images = node_data(node, 64)
    first = node_teacher_maps(node, images, spec, cfg, None, 1)
    ref = compute_maps(teacher, load_dataset(data), images.ids, cfg)
    assert first.shape == (1, 64, 64) and np.array_equal(first, ref)
    shutil.rmtree(tmp_path / "work" / "maps")
    (folder / "teacher.safetensors").unlink()  # a later run reads the cache and never loads the weights
    assert np.array_equal(node_teacher_maps(node, images, spec, cfg, None, 1), first)


# ---- real processes ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fed_world(tmp_path_factory):
    """A 12-image synthetic set at 64 px, and the in-process reference run (two clients, two rounds)."""
    from samfed.data.synth import write_synthetic
    from samfed.train.runner import train

    root = tmp_path_factory.mktemp("fed")
    data = write_synthetic("polyp", 12, root / "data", seed=0, size=64)
    cfg = RunConfig(
        data=str(data), clients=2, image_size=64, rounds=2, server_epochs=2, local_epochs=1, batch_size=4,
        teacher_mode="none", labeled_fraction=0.25, val_fraction=0.2, partition="iid", threads=1,
        teacher_cache=str(root / "teacher-cache"),
    )  # fmt: skip
    threads = torch.get_num_threads()
    try:
        train(cfg, root / "inproc", progress=False)
    finally:
        torch.set_num_threads(threads)
    state = torch.load(root / "inproc" / "state" / "checkpoint.pt", weights_only=True)
    return {
        "root": root,
        "data": data,
        "cfg": cfg,
        "split": root / "inproc" / "split.json",
        "global": state["global"],
    }


def _server_dir(world, path: Path, split: Path | None = None, **changes) -> Path:
    path.mkdir(parents=True)
    cfg = world["cfg"].override(**changes)
    cfg.save(path / "config.toml")
    shutil.copy(split or world["split"], path / "split.json")
    return path


def _node(world, k: int, split: Path | None = None, key: Path | None = None) -> NodeSpec:
    cfg = {
        "data-path": str(world["data"]), "split": str(split or world["split"]), "partition-id": k,
        "name": f"clinic-{'abc'[k]}", "work-dir": str(world["root"] / f"node-{k}"),
        "teacher-cache": world["cfg"].teacher_cache, "threads": 1,
    }  # fmt: skip
    return NodeSpec(cfg, auth_key=key)


def _run(fed: LocalFederation, opts: ServerOptions, timeout: float = 400, during=None) -> dict:
    """Submit the run and wait for status finished/failed; `during(fed)` is polled meanwhile and
    may return True to stop waiting. Remembers every descendant PID for the final check."""
    status_file = Path(opts.run_dir) / "federation" / "status.json"
    status_file.unlink(missing_ok=True)
    fed.submit(opts.to_run_config())
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for p in [fed.superlink, *fed.nodes]:
            if p.alive():
                p.remember_children()
        status = json.loads(status_file.read_text()) if status_file.is_file() else {}
        if status.get("state") in ("finished", "failed"):
            return status
        if during is not None and during(fed):
            return {"state": "interrupted"}
        time.sleep(0.3)
    raise AssertionError(f"the federation did not finish in {timeout} s:\n{fed.superlink.log_tail(30)}")


def _all_stopped(procs: list) -> None:
    pids = {pid for p in procs for pid in (*p.known, p.pid)}
    alive = [
        pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    assert not alive, f"processes still running: {alive}"


def _opts(run_dir: Path, **kw) -> ServerOptions:
    return ServerOptions(run_dir=str(run_dir), teacher_runtime="torch", connect_timeout=180, **kw)


def _global(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "state" / "checkpoint.pt", weights_only=True)["global"]


@pytest.mark.slow
def test_cli_serve_and_two_nodes_match_inprocess_and_send_only_weights(fed_world, tmp_path):
    """`samfed serve` + two `samfed node` processes, exactly as the README walk-through."""
    samfed, port = flower_bin("samfed"), free_port()
    run_dir, cfg_file = tmp_path / "server", tmp_path / "run.toml"
    fed_world["cfg"].save(cfg_file)
    serve = start_process("samfed serve", [
        samfed, "serve", "--out", str(run_dir), "--config", str(cfg_file), "--split", str(fed_world["split"]),
        "--host", "127.0.0.1", "--port", str(port), "--insecure", "--teacher-runtime", "torch",
        "--connect-timeout", "180",
    ], tmp_path / "serve.log")  # fmt: skip
    nodes = []
    for k in range(2):
        nc = _node(fed_world, k).node_config
        nodes.append(start_process(f"samfed node {k}", [
            samfed, "node", "--data", nc["data-path"], "--superlink", f"127.0.0.1:{port}",
            "--client-id", str(k), "--name", nc["name"], "--split", nc["split"], "--work-dir", nc["work-dir"],
            "--threads", "1", "--teacher-cache", nc["teacher-cache"], "--insecure",
        ], tmp_path / f"node-{k}.log"))  # fmt: skip
    procs = [serve, *nodes]
    try:
        end = time.monotonic() + 400
        while serve.alive() and time.monotonic() < end:
            for p in procs:
                p.remember_children()
            time.sleep(0.5)
    finally:
        for p in procs:
            p.stop()
        _all_stopped(procs)
    assert serve.popen.returncode == 0, serve.log_tail(30)
    assert "finished" in serve.log.read_text()
    ref, got = fed_world["global"], _global(run_dir)
    assert list(ref) == list(got)
    diff = max(float((ref[k].double() - got[k].double()).abs().max()) for k in ref)
    assert diff == 0.0, f"Flower and in-process global weights differ by {diff}"
    assert "round 2:" in nodes[0].log.read_text()  # the node printed its per-round report
    assert "round 2: 2 update(s)" in serve.log.read_text() and "global val Dice" in serve.log.read_text()
    status = json.loads((run_dir / "federation" / "status.json").read_text())
    assert status["state"] == "finished" and status["nodes"] == {"clinic-a": "done", "clinic-b": "done"}

    # every message a node sent: weights named and shaped like the student's state dict, scalars
    cfg = fed_world["cfg"]
    shapes = {
        k: list(v.shape) for k, v in create_student(cfg.global_arch, norm=cfg.norm).state_dict().items()
    }
    records = [json.loads(x) for x in (run_dir / "federation" / "messages.jsonl").read_text().splitlines()]
    assert {"query.hello", "train"} <= {r["kind"] for r in records} <= {"query.hello", "query.setup", "train"}
    assert sum(r["kind"] == "train" for r in records) == 4
    for rec in records:
        assert "error" not in rec, rec
        for name, content in rec["content"].items():
            if content["type"] == "ArrayRecord":
                assert name == P.STATE and rec["kind"] == "train"
                assert {k: a["shape"] for k, a in content["arrays"].items()} == shapes
            else:
                assert set(content["values"].values()) <= {"int", "float", "bool", "str"}, content
    rounds = json.loads((run_dir / "federation" / "rounds.json").read_text())
    assert [r["answered"] for r in rounds] == [["clinic-a", "clinic-b"]] * 2
    report = [
        json.loads(x) for x in (fed_world["root"] / "node-0" / "node-report.jsonl").read_text().splitlines()
    ]
    assert [r["round"] for r in report][-2:] == [1, 2] and all(r["peak_rss_mb"] > 0 for r in report)
    assert (run_dir / "global" / "student.safetensors").is_file() and (run_dir / "manifest.json").is_file()


EQUIVALENCE_CASES = {
    # heterogeneous students: clients keep their weights, the server distils their ensemble on D_p;
    # the teacher is prompted with boxes from the initial global model's masks
    "distill-global-box": dict(
        students=["unet-s", "mobile-unet"], teacher_prompt="global-box", warmup_epochs=2
    ),
    # client-level DP: nodes clip their updates, the server adds Gaussian noise (GroupNorm students)
    "dp-fedavg": dict(norm="group", dp_clip=0.5, dp_noise=0.3),
}


@pytest.mark.slow
def test_flower_equals_inprocess_for_distillation_global_box_and_dp(fed_world, tmp_path):
    """Each case run in-process and on one real federation (two runs, one after the other, on the
    same SuperLink and nodes) ends with bit-identical global and client weights."""
    from samfed.train.runner import train

    nodes = [_node(fed_world, k) for k in range(2)]
    fed = LocalFederation(tmp_path / "flower", nodes)
    runs = {}
    try:
        with fed:
            for name, changes in EQUIVALENCE_CASES.items():
                run_dir = _server_dir(fed_world, tmp_path / f"server-{name}", **changes)
                runs[name] = (run_dir, _run(fed, _opts(run_dir)))
    finally:
        _all_stopped([fed.superlink, *fed.nodes])
    threads = torch.get_num_threads()
    for name, changes in EQUIVALENCE_CASES.items():
        run_dir, status = runs[name]
        assert status["state"] == "finished", (name, status)
        try:
            inproc = train(fed_world["cfg"].override(**changes), tmp_path / f"inproc-{name}", progress=False)
        finally:
            torch.set_num_threads(threads)
        for sub in ("global", "clients/0", "clients/1"):
            ref = load_file(str(inproc.run_dir / sub / "student.safetensors"))
            got = load_file(str(run_dir / sub / "student.safetensors"))
            assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref), (name, sub)
        rounds = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        last = [r for r in rounds if r.get("event") == "round"][-1]
        if name == "dp-fedavg":
            assert last["dp_epsilon"] > 0 and last["dp_clip"] == 0.5
        else:
            assert "distill_kd" in last
    teacher = json.loads((runs["distill-global-box"][0] / "summary.json").read_text())["teacher"]
    assert teacher["prompt"] == "global-box"


@pytest.mark.slow
def test_tls_node_auth_and_resume_reach_the_same_weights(fed_world, tmp_path):
    tls = make_certificates(tmp_path / "certs")
    keys = [make_node_key(tmp_path / "keys", f"clinic-{k}") for k in range(3)]
    run_dir = _server_dir(fed_world, tmp_path / "server")
    nodes = [_node(fed_world, k, key=keys[k].private_key) for k in range(2)]

    def round_one_saved(_fed) -> bool:
        ckpt = run_dir / "state" / "checkpoint.pt"
        return ckpt.is_file() and int(torch.load(ckpt, weights_only=True)["round"]) >= 1

    fed = LocalFederation(tmp_path / "flower1", nodes, tls=tls, node_auth=True)
    try:
        with fed:
            # a node whose key was never registered must not get in
            stranger = fed.add_node(_node(fed_world, 1, key=keys[2].private_key), register=False)
            status = _run(fed, _opts(run_dir, num_nodes=2), during=round_one_saved)
            fed.superlink.crash()  # the server goes down in the middle of round 2
    finally:
        _all_stopped([fed.superlink, *fed.nodes])
    assert status["state"] == "interrupted"
    assert int(torch.load(run_dir / "state" / "checkpoint.pt", weights_only=True)["round"]) == 1
    hello = [json.loads(x) for x in (run_dir / "federation" / "messages.jsonl").read_text().splitlines()]
    assert len({r["node_id"] for r in hello if r["kind"] == "query.hello"}) == 2
    assert "Failed to activate SuperNode" in stranger.log.read_text()  # the SuperLink refused its key

    fed = LocalFederation(tmp_path / "flower2", nodes, tls=tls, node_auth=True)
    try:
        with fed:
            status = _run(fed, _opts(run_dir, resume=True))
    finally:
        _all_stopped([fed.superlink, *fed.nodes])
    assert status["state"] == "finished", status
    ref, got = fed_world["global"], _global(run_dir)
    assert all(torch.equal(ref[k], got[k]) for k in ref), "resumed run differs from the uninterrupted one"
    rounds = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"round"' in x]
    assert sorted(r["round"] for r in rounds if r.get("event") == "round") == [0, 1, 2]


@pytest.mark.slow
def test_node_killed_mid_round_is_named_missing_and_the_run_finishes(fed_world, tmp_path):
    """Three nodes with heterogeneous students; clinic-c is SIGKILLed while training round 2."""
    from samfed.data.partition import Split

    split = Split.load(fed_world["split"])
    pool = [i for c in split.clients for i in c]
    split.clients = [pool[k::3] for k in range(3)]
    split_path = split.save(tmp_path / "split3.json")
    # heterogeneous students (mobile-unet on clinic-b): clients keep their own weights, the server distils
    run_dir = _server_dir(
        fed_world, tmp_path / "server", split=split_path, clients=3, students=["unet-s", "mobile-unet"],
        warmup_epochs=2, distill_epochs=2,
    )  # fmt: skip
    nodes = [_node(fed_world, k, split=split_path) for k in range(3)]
    killed = {}

    def kill_during_round_two(fed) -> bool:
        rounds_file = run_dir / "federation" / "rounds.json"
        if killed or not rounds_file.is_file():
            return False
        victim = fed.nodes[2]
        busy = any("flwr-clientapp" in _cmdline(p) for p in _children(victim.pid))
        if busy:  # its ClientApp is training round 2
            victim.crash()
            killed["at"] = time.monotonic()
        return False

    fed = LocalFederation(tmp_path / "flower", nodes)
    try:
        with fed:
            status = _run(
                fed, _opts(run_dir, min_clients=2, straggler_timeout=10.0), during=kill_during_round_two
            )
    finally:
        _all_stopped([fed.superlink, *fed.nodes])
    assert killed, "node 2 was never seen training round 2"
    assert status["state"] == "finished", status
    rounds = json.loads((run_dir / "federation" / "rounds.json").read_text())
    assert rounds[0]["answered"] == ["clinic-a", "clinic-b", "clinic-c"] and rounds[0]["missing"] == []
    assert rounds[1]["missing"] == ["clinic-c"] and rounds[1]["answered"] == ["clinic-a", "clinic-b"]
    assert (
        "no reply" in rounds[1]["missing_detail"][0]["reason"]
        or "unavailable" in rounds[1]["missing_detail"][0]["reason"]
    )
    final = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "round" and r.get("missing") == ["clinic-c"] for r in final)
    assert any(r.get("event") == "round" and "distill_kd" in r for r in final)
    arch = json.loads((run_dir / "clients" / "1" / "student.json").read_text())["arch"]
    assert arch == "mobile-unet"


def _children(pid: int) -> list:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _cmdline(p) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""
