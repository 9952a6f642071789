"""Untrusted federation input: what the server sends a node, what a node reports, update checks.

Fast tests on the validation functions with real tensors and arrays, and through the ClientApp's
own handlers (`hello`, `setup`, `local_round`) with real Flower messages delivered in-process.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

from samfed.config import RunConfig
from samfed.errors import SamfedError
from samfed.federation import client_app as CA
from samfed.federation import protocol as P
from samfed.federation.options import ServerOptions
from samfed.federation.validation import (
    check_num_samples,
    norm_outliers,
    reference_ratio,
    update_ratio,
    validate_updates,
)
from samfed.models import create_student

BAD_DIGESTS = [
    "../../escape",
    "/etc",
    "..",
    "",
    "A" * 32,  # upper case
    "a" * 31,
    "a" * 64,
    "0123456789abcdef0123456789abcdeg",
    "..\\..\\windows\\x",
    None,
    12345,
]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def _message(content: RecordDict, kind: str) -> Message:
    """A server message as the SuperNode delivers it to the ClientApp."""
    md = Metadata(
        run_id=1,
        message_id="m1",
        src_node_id=0,
        dst_node_id=7,
        reply_to_message_id="",
        group_id="0",
        created_at=time.time(),
        ttl=600.0,
        message_type=kind,
    )
    return Message(content, metadata=md)


def _context(data: Path, work: Path) -> Context:
    cfg = {"data-path": str(data), "partition-id": 0, "work-dir": str(work)}
    return Context(run_id=1, node_id=7, node_config=cfg, state=RecordDict(), run_config={})


def _public(n: int = 2, size: int = 32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "images": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        "masks": (rng.random((n, size, size)) > 0.5).astype(np.uint8),
    }


# ---- server -> node: asset hashes and names ----------------------------------------------------


def test_digests_are_what_the_server_sends_and_nothing_else():
    public = _public()
    files = {"b.onnx": b"2", "a.json": b"1"}
    for digest in (P.public_digest(public), P.files_digest(files), P.asset_digest(b"x")):
        assert P.check_digest(digest, "public-hash") == digest and len(digest) == P.DIGEST_CHARS
    assert P.files_digest(files) == P.files_digest(dict(reversed(files.items())))  # order-free
    for bad in BAD_DIGESTS:
        with pytest.raises(SamfedError, match="teacher-hash .*32 lowercase hex"):
            P.check_digest(bad, "teacher-hash")
    for name in ("teacher.onnx", "teacher_onnx.json", "decoder-1.bin"):
        assert P.check_asset_name(name) == name
    for bad in ("../x", ".complete", "a/b", "a\\b", "", "..", "x" * 200, "a..b", None, 3):
        with pytest.raises(SamfedError, match="plain file name"):
            P.check_asset_name(bad)


def test_setup_refuses_traversal_bad_names_and_tampered_assets_and_writes_nothing(tmp_path, polyp_dir):
    work = tmp_path / "node"
    ctx = _context(polyp_dir, work)
    public = _public()
    files = {"teacher.json": b"{}"}
    good_pub, good_files = P.public_digest(public), P.files_digest(files)

    def setup(cfg: dict, with_public: bool = True, teacher: dict | None = None) -> Message:
        cfg = {k: v for k, v in {"public-ids": ["a", "b"], **cfg}.items() if v is not None}  # None: absent
        rd = RecordDict({P.CONFIG: ConfigRecord(cfg)})
        if with_public:
            rd[P.PUBLIC] = P.arrays_record(public)
        if teacher is not None:
            rd[P.FILES] = ConfigRecord(teacher)
        return CA.setup(_message(rd, "query.setup"), ctx)

    before = _files(tmp_path)
    for bad in BAD_DIGESTS:
        with pytest.raises(SamfedError, match="public-hash"):
            setup({"public-hash": bad})
        with pytest.raises(SamfedError, match="teacher-hash"):
            setup({"teacher-hash": bad}, with_public=False, teacher=files)
    evil = {"../../evil.onnx": b"x"}
    with pytest.raises(SamfedError, match="plain file name"):
        setup({"teacher-hash": P.files_digest(evil)}, with_public=False, teacher=evil)
    with pytest.raises(SamfedError, match="does not match its hash"):
        setup({"teacher-hash": good_files}, with_public=False, teacher={"teacher.json": b"{1}"})
    with pytest.raises(SamfedError, match="does not match its hash"):
        setup({"public-hash": P.asset_digest(b"other")})
    with pytest.raises(SamfedError, match="ids"):
        setup({"public-hash": good_pub, "public-ids": ["a"]})
    assert _files(tmp_path) == before  # nothing written, inside or outside the node's folder

    reply = setup({"public-hash": good_pub, "teacher-hash": good_files}, teacher=files)
    assert reply.content[P.INFO]["ok"]
    assert {p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file()} == {
        f"assets/{good_pub}/public.npz",
        f"assets/{good_pub}/.complete",
        f"assets/{good_files}/teacher.json",
        f"assets/{good_files}/.complete",
    }
    hello = {"protocol": 1, "public-hash": good_pub, "teacher-hash": good_files}
    info = CA.hello(_message(RecordDict({P.CONFIG: ConfigRecord(hello)}), "query.hello"), ctx).content[P.INFO]
    assert info["has-public"] and info["has-teacher"] and info["num-samples"] == 24
    with pytest.raises(SamfedError, match="teacher-hash"):
        hello_bad = {**hello, "teacher-hash": "../" + good_files}
        CA.hello(_message(RecordDict({P.CONFIG: ConfigRecord(hello_bad)}), "query.hello"), ctx)


def test_public_set_shapes_dtypes_and_ids_are_checked():
    public = _public(3)
    assert P.check_public(public, ["a", "b", "c"]) == ["a", "b", "c"]
    bad = [
        ({**public, "images": public["images"][..., :1]}, "images"),
        ({**public, "images": public["images"].astype(np.float32)}, "images"),
        ({**public, "images": public["images"][:0]}, "images"),
        ({**public, "masks": public["masks"] * 255}, "masks"),
        ({**public, "masks": public["masks"][:, :16]}, "masks"),
        ({"images": public["images"]}, "lacks"),
    ]
    for arrays, match in bad:
        with pytest.raises(SamfedError, match=match):
            P.check_public(arrays, ["a", "b", "c"])
    for ids in (["a", "b"], ["a", "a", "b"], "abc", [1, 2, 3]):
        with pytest.raises(SamfedError, match="ids"):
            P.check_public(public, ids)


# ---- server -> node: the train message ---------------------------------------------------------


def _train_cfg(**changes) -> dict:
    cfg = RunConfig(method="fixmatch", image_size=32, batch_size=8, clients=1, rounds=1)
    import tomli_w

    rec = {
        "round": 1,
        "seed": 12345,
        "run-config": tomli_w.dumps(cfg.method_settings()),
        "arch": "unet-s",
        "public-hash": P.public_digest(_public()),
        "dp-clip": 0.0,
    }
    rec.update(changes)
    return {k: v for k, v in rec.items() if v is not None}


def test_train_request_checks_types_ranges_and_digests():
    req = P.train_request(_train_cfg())
    assert req.round == 1 and req.teacher_spec == {} and req.dp_clip == 0.0
    ref = P.asset_digest(b"t")
    assert P.train_request(_train_cfg(**{"teacher-kind": "onnx", "teacher-ref": ref})).teacher_spec == {
        "teacher-kind": "onnx",
        "teacher-ref": ref,
    }
    bad = [
        ({"round": "abc"}, "round"),
        ({"round": 0}, "round"),
        ({"round": True}, "round"),
        ({"round": 1.5}, "round"),
        ({"seed": -1}, "seed"),
        ({"run-config": None}, "run-config"),
        ({"arch": 3}, "arch"),
        ({"public-hash": "../x"}, "public-hash"),
        ({"dp-clip": math.nan}, "dp-clip"),
        ({"dp-clip": -1.0}, "dp-clip"),
        ({"dp-clip": math.inf}, "dp-clip"),
        ({"teacher-kind": "pickle", "teacher-ref": ref}, "teacher-kind"),
        ({"teacher-kind": "onnx", "teacher-ref": "../../" + ref}, "teacher-ref"),
        ({"teacher-kind": "onnx"}, "teacher-ref"),
    ]
    for change, key in bad:
        with pytest.raises(SamfedError, match=f"The server sent (an invalid )?{key}"):
            P.train_request(_train_cfg(**change))


def test_server_run_config_is_validated_on_the_node():
    assert CA.node_run_config(_train_cfg()["run-config"]).image_size == 32
    with pytest.raises(SamfedError, match="not valid TOML"):
        CA.node_run_config("rounds = = 3")
    with pytest.raises(SamfedError, match="unknown setting"):
        CA.node_run_config('evil = "x"')
    with pytest.raises(SamfedError, match="image.size"):
        CA.node_run_config("image_size = 30")
    # machine settings (the server's paths, threads, device) never reach a node; one that does is refused
    for line in ('device = "cuda"', 'data = "/srv/hospital-a"', "threads = 64"):
        with pytest.raises(SamfedError, match="machine settings"):
            CA.node_run_config(line)


def test_server_weights_must_fit_the_model():
    model = create_student("unet-s", norm="batch")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert CA.checked_state(P.state_record(state), model, "global weights").keys() == state.keys()
    key = next(k for k, v in state.items() if v.is_floating_point() and v.dim() == 4)
    nan = {**state, key: state[key].clone().fill_(float("nan"))}
    wrong = {**state, key: torch.zeros(1, 1, 1, 1)}
    for bad, match in ((nan, "non-finite"), (wrong, "wrong shape"), ({"x": torch.zeros(2)}, "wrong keys")):
        with pytest.raises(SamfedError, match=f"global weights do not fit the model: {match}"):
            CA.checked_state(P.state_record(bad), model, "global weights")
    with pytest.raises(SamfedError, match="lacks the global weights"):
        CA.checked_state(None, model, "global weights")


def _stored_public(node: CA.NodeSettings, polyp_dir: Path, size: int = 32) -> str:
    from samfed.data.readers import load_dataset
    from samfed.engine.data import split_arrays

    ds = load_dataset(polyp_dir)
    lab = split_arrays(ds, ds.ids[:4], size, True)
    public = {"images": lab.images, "masks": lab.masks.astype(np.uint8)}
    digest = P.public_digest(public)
    CA.store_public(node, digest, public, list(lab.ids))
    return digest


def test_local_round_refuses_bad_server_values_before_touching_disk_and_runs_good_ones(tmp_path, polyp_dir):
    node = CA.NodeSettings(
        data_path=polyp_dir, partition_id=0, name="a", work_dir=tmp_path / "node", threads=1
    )
    digest = _stored_public(node, polyp_dir)
    model = create_student("unet-s", norm="batch")
    content = RecordDict({P.GLOBAL: P.state_record(model.state_dict())})
    before = _files(tmp_path)
    ref = P.asset_digest(b"t")
    bad = [
        ({"teacher-kind": "onnx", "teacher-ref": "../../outside"}, "teacher-ref"),
        ({"public-hash": "../" + digest}, "public-hash"),
        ({"round": "1"}, "round"),
        ({"arch": "evil"}, "unknown student"),
    ]
    for change, match in bad:
        with pytest.raises(SamfedError, match=match):
            CA.local_round(node, _train_cfg(**{"public-hash": digest, **change}), content)
    with pytest.raises(SamfedError, match="image size 64 differs"):
        run64 = CA.node_run_config(_train_cfg()["run-config"]).override(image_size=64)
        import tomli_w

        text = tomli_w.dumps(run64.method_settings())
        CA.local_round(node, _train_cfg(**{"public-hash": digest, "run-config": text}), content)
    bad_weights = RecordDict({P.GLOBAL: P.state_record({"w": torch.zeros(3)})})
    with pytest.raises(SamfedError, match="global weights do not fit"):
        CA.local_round(node, _train_cfg(**{"public-hash": digest}), bad_weights)
    assert _files(tmp_path) == before
    with pytest.raises(SamfedError, match="no copy of teacher"):  # a valid digest it never received
        CA.local_round(
            node, _train_cfg(**{"public-hash": digest, "teacher-kind": "onnx", "teacher-ref": ref}), content
        )

    state, metrics = CA.local_round(node, _train_cfg(**{"public-hash": digest}), content)
    assert state.keys() == model.state_dict().keys() and metrics["num_samples"] == 24
    report = [json.loads(line) for line in (node.work_dir / CA.REPORT).read_text().splitlines()]
    assert report[-1]["round"] == 1 and report[-1]["peak_rss_mb"] > 0


def test_a_node_emulating_bf16_says_so_and_the_server_warns_once_per_site(tmp_path, polyp_dir, monkeypatch):
    import tomli_w

    from samfed.federation.server_app import Client, FederatedRun

    node = CA.NodeSettings(
        data_path=polyp_dir, partition_id=0, name="a", work_dir=tmp_path / "node", threads=1
    )
    digest = _stored_public(node, polyp_dir)
    content = RecordDict({P.GLOBAL: P.state_record(create_student("unet-s", norm="batch").state_dict())})
    run = CA.node_run_config(_train_cfg()["run-config"])
    said: list[str] = []
    site = SimpleNamespace(clients_by_k={0: Client(0, "a", 7, 24)}, bf16_warned=set(), say=said.append)
    for precision, native, reported in [("fp32", False, None), ("bf16", True, 1.0), ("bf16", False, 0.0)]:
        for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
            monkeypatch.setattr(torch.cpu, probe, lambda native=native: native, raising=False)
        text = tomli_w.dumps(run.override(precision=precision).method_settings())
        _, metrics = CA.local_round(node, _train_cfg(**{"public-hash": digest, "run-config": text}), content)
        assert metrics.get("bf16_native") == reported
        for _ in range(2):  # two rounds
            FederatedRun.warn_emulated_bf16(site, {0: dict(P.scalar_metrics(metrics))})
    assert len(said) == 1 and "site a has no AMX or AVX512-BF16" in said[0]


# ---- node -> server: identity and sample counts ------------------------------------------------


def test_hello_identity_is_checked():
    hello = {"partition-id": 2, "name": "Clinic Zürich-2", "num-samples": 40, "protocol": P.PROTOCOL_VERSION}
    ok = P.read_hello(hello, clients=3)
    assert (ok.k, ok.name, ok.num_samples) == (2, "Clinic Zürich-2", 40)
    bad = [
        ({"partition-id": "abc"}, "partition-id"),
        ({"partition-id": True}, "partition-id"),
        ({"partition-id": 3}, "partition-id"),
        ({"partition-id": -1}, "partition-id"),
        ({"partition-id": None}, "partition-id"),
        ({"name": "[/]x"}, "name"),
        ({"name": "[bold red]admin"}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"name": 5}, "name"),
        ({"num-samples": 0}, "num-samples"),
        ({"num-samples": -4}, "num-samples"),
        ({"num-samples": "40"}, "num-samples"),
        ({"num-samples": 1.5}, "num-samples"),
        ({"num-samples": P.MAX_SAMPLES + 1}, "num-samples"),
        ({"protocol": P.PROTOCOL_VERSION - 1}, "protocol"),
        ({"protocol": str(P.PROTOCOL_VERSION)}, "protocol"),
        ({"protocol": None}, "protocol"),
    ]
    for change, key in bad:
        info = {"partition-id": 0, "name": "a", "num-samples": 40, "protocol": P.PROTOCOL_VERSION, **change}
        with pytest.raises(ValueError, match=key):
            P.read_hello(info, clients=3)


def test_round_sample_counts_are_checked_against_the_announced_count():
    assert check_num_samples(40, 40) is None and check_num_samples(12, 40) is None
    assert check_num_samples(40.0, 40) is None
    for bad in (0, -3, 41, 10**9, 1.5, math.nan, math.inf, "40", True, None):
        reason = check_num_samples(bad, 40)
        assert reason is not None and "from 1 to 40" in reason


# ---- update norm checks ------------------------------------------------------------------------


def _global_and_updates(seed: int = 0):
    """A real student's state dict and two plausible local updates of it (relative size ~1e-2)."""
    torch.manual_seed(seed)
    ref = create_student("unet-s", norm="group").state_dict()

    def step(scale: float, s: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(s)
        return {
            k: v + scale * v.abs().mean() * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
            for k, v in ref.items()
        }

    return ref, step


def test_norm_bound_works_with_one_and_two_clients():
    ref, step = _global_and_updates()
    good, good2 = step(0.01, 1), step(0.012, 2)
    bound = ServerOptions().max_update_ratio
    assert bound > 0
    r_good = update_ratio(good, ref)
    factor = 2 * bound / r_good  # weights blown up (or replaced) far beyond any local training
    boosted = {
        k: ref[k] + factor * (good[k] - ref[k]) if v.is_floating_point() else v for k, v in ref.items()
    }
    assert 0 < r_good < 0.1 and update_ratio(boosted, ref) == pytest.approx(2 * bound, rel=1e-6)

    # one client, absolute bound (the server default)
    acc, rej, _ = validate_updates({"0": boosted}, {"0": ref}, max_ratio=bound)
    assert acc == [] and "above the limit" in rej[0].reason
    acc, rej, _ = validate_updates({"0": good}, {"0": ref}, max_ratio=bound)
    assert acc == ["0"] and rej == []

    # two clients, a smaller boost under the absolute bound: the previous round's median catches it
    boost20 = {k: ref[k] + 20 * (good2[k] - ref[k]) if v.is_floating_point() else v for k, v in ref.items()}
    updates, sent = {"0": good, "1": boost20}, {"0": ref, "1": ref}
    acc, rej, _ = validate_updates(updates, sent, max_ratio=bound)
    assert acc == ["0", "1"]  # no history yet (round 1): the pair's median cannot tell
    history = [{"round": 1, "closed": True, "update_ratios": {"0": r_good, "1": r_good * 1.1}}]
    acc, rej, ratios = validate_updates(updates, sent, 10.0, bound, reference_ratio(history))
    assert acc == ["0"] and rej[0].client == "1" and "previous round's median" in rej[0].reason
    assert ratios["1"] > 10 * reference_ratio(history)


def test_reference_ratio_and_round_median():
    assert reference_ratio([]) is None
    history = [
        {"round": 1, "closed": True, "update_ratios": {"0": 0.1, "1": 0.3, "2": 0.2}},
        {"round": 2, "closed": False, "update_ratios": {}},
        {"round": 3, "closed": True},  # written before update_ratios were recorded
    ]
    assert reference_ratio(history) == pytest.approx(0.2)
    # >= 3 updates: the round's own median decides, the reference is not used
    ratios = {"a": 0.1, "b": 0.12, "c": 5.0}
    assert set(norm_outliers(ratios, 10.0, None, reference=100.0)) == {"c"}
    assert norm_outliers({"a": 0.1, "b": 5.0}, 10.0, None, reference=None) == {}
    assert set(norm_outliers({"a": 0.1, "b": 5.0}, 10.0, None, reference=0.1)) == {"b"}
    assert norm_outliers({"a": 0.1, "b": 5.0}, 0.0, None, reference=0.1) == {}  # factor 0: off


def test_server_options_expose_the_bound():
    opts = ServerOptions(run_dir="/x", max_update_ratio=5.0)
    assert ServerOptions.from_run_config(opts.to_run_config()).max_update_ratio == 5.0
    assert ServerOptions.defaults()["max-update-ratio"] == ServerOptions().max_update_ratio == 20.0
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(SamfedError, match="max-update-ratio"):
            ServerOptions(max_update_ratio=bad)
    with pytest.raises(SamfedError, match="outlier-factor"):
        ServerOptions(outlier_factor=-2.0)
    out = subprocess.run(
        [sys.executable, "-m", "cli", "serve", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "--max-update-ratio" in out.stdout


# ---- the node without `resource` (Windows) -----------------------------------------------------


def test_node_helpers_import_and_measure_without_resource(tmp_path):
    code = (
        # psutil's Linux backend needs `resource` (its Windows one does not): load it first
        "import sys, json, psutil; sys.modules['resource'] = None\n"
        "import edge.node as n\n"
        "import samfed.federation.client_app\n"
        "with n.RoundMeter() as m: sum(range(1000))\n"
        "rep = m.report(1, 1, 8)\n"
        f"n.append_report({str(tmp_path / 'r.jsonl')!r}, rep)\n"
        "print(json.dumps([n.peak_rss_bytes(), m.peak_rss_mb, rep.wall_s >= 0]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == [None, None, True]  # Linux psutil: no peak_wset
    assert json.loads((tmp_path / "r.jsonl").read_text())["peak_rss_mb"] is None
    from edge.node import peak_rss_bytes

    assert peak_rss_bytes() > 10 * 2**20
