"""Export: checkpoint contract, ONNX FP32 + ONNX Runtime INT8 for every student, recommendation
rules, and `samfed export` end to end (tiny 64 px students, a few synthetic images)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from export_helpers import SIZE, inputs, tiny_checkpoint, tiny_student

from edge.manifest import load_manifest
from edge.session import open_session
from export.checkpoint import (
    load_student_checkpoint,
    read_checkpoint_info,
    resolve_checkpoint,
    save_student_checkpoint,
)
from export.images import export_images
from export.onnx_export import export_onnx
from export.ort_quant import quantize_onnx_int8
from export.parity import mask_agreement
from export.recommend import recommend
from samfed.data import load_dataset
from samfed.errors import SamfedError
from samfed.models import create_student, list_students
from samfed.preprocess import Preprocessing


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=600)


def test_checkpoint_round_trip_and_errors(tmp_path, polyp_dir):
    run = tmp_path / "run"
    tiny_checkpoint("unet-s", "group", polyp_dir, run / "global", source_run="run-1")
    assert resolve_checkpoint(run) == run / "global"
    assert resolve_checkpoint(run / "global" / "student.safetensors") == run / "global"
    model, meta = load_student_checkpoint(run)
    assert (meta["arch"], meta["norm"], meta["prep"].size, meta["threshold"]) == (
        "unet-s",
        "group",
        SIZE,
        0.5,
    )
    assert meta["source_run"] == "run-1" and not model.training
    with pytest.raises(SamfedError, match="does not exist"):
        load_student_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SamfedError, match="student.json"):
        load_student_checkpoint(tmp_path / "empty")
    # weights of one architecture declared as another
    wrong = tmp_path / "wrong"
    save_student_checkpoint(create_student("unet-s"), "mobile-unet", "batch", Preprocessing(size=SIZE), wrong)
    with pytest.raises(SamfedError, match="do not fit"):
        load_student_checkpoint(wrong)
    (wrong / "student.safetensors").write_bytes(b"garbage")
    with pytest.raises(SamfedError, match="Cannot read weights"):
        load_student_checkpoint(wrong)


@pytest.mark.parametrize("name", list_students())
def test_onnx_fp32_and_ort_int8_round_trip(name, tmp_path, polyp_dir):
    norm = "group" if name == "mobile-unet" else "batch"  # both norms covered across the zoo
    x = inputs(polyp_dir, Preprocessing(size=SIZE), n=12)
    model = tiny_student(name, norm, x)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    fp32 = export_onnx(model, tmp_path / "m.onnx", SIZE)
    graph = onnx.load(fp32).graph
    assert [i.name for i in graph.input] == ["image"] and [o.name for o in graph.output] == ["logits"]
    out = open_session(fp32, threads=1).run(x[:3])  # dynamic batch: exported at 1, run at 3
    assert out.shape == (3, 1, SIZE, SIZE)
    np.testing.assert_allclose(out, ref[:3], atol=1e-3)

    int8 = quantize_onnx_int8(fp32, tmp_path / "m8.onnx", x[:8])
    ops = {n.op_type for n in onnx.load(int8).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    q = open_session(int8, threads=1).run(x)
    # Random-init stand-ins quantise worse than trained students (deep mobile-unet: Dice ~0.8 on
    # an AVX-512 VNNI CPU, 0.74 on an AVX2-only one; the others ~0.95); a broken quantisation gives
    # Dice ~0.5 and no correlation.
    agree = mask_agreement(ref, q)
    assert agree["dice_mean"] > 0.7, agree
    assert np.corrcoef(ref.ravel(), q.ravel())[0, 1] > 0.6  # mobile-unet: 0.66 on an AVX2-only CPU
    assert agree["max_abs_logit_diff"] > 0  # it really is quantised


def _art(backend, precision, p50, dice_gt=None, agree=1.0):
    parity = {"dice_mean": agree, "dice_vs_fp32": agree}
    if dice_gt is not None:
        parity["dice_vs_gt"] = dice_gt
    return {"backend": backend, "precision": precision, "parity": parity, "latency": {"1": {"p50_ms": p50}}}


def test_recommend_rules():
    good = {"onnx-fp32": _art("onnxruntime", "fp32", 6.0), "onnx-int8": _art("onnxruntime", "int8", 4.0)}
    assert recommend(good)[0] == "onnx-int8" and recommend(good)[2] == []
    slow = {"onnx-fp32": _art("onnxruntime", "fp32", 4.0), "onnx-int8": _art("onnxruntime", "int8", 4.5)}
    key, _, warns = recommend(slow)
    assert key == "onnx-fp32" and any("NOT faster" in w for w in warns)
    lossy = {
        "onnx-fp32": _art("onnxruntime", "fp32", 6.0, dice_gt=0.80),
        "onnx-int8": _art("onnxruntime", "int8", 3.0, dice_gt=0.78),
    }
    key, _, warns = recommend(lossy)
    assert key == "onnx-fp32" and any("2.00 Dice points" in w for w in warns)
    disagree = {
        "onnx-fp32": _art("onnxruntime", "fp32", 6.0),
        "onnx-int8": _art("onnxruntime", "int8", 3.0, agree=0.95),
    }
    assert recommend(disagree)[0] == "onnx-fp32"


@pytest.mark.slow
def test_export_cli_writes_verified_manifest(tmp_path, polyp_dir):
    run = tmp_path / "run"
    tiny_checkpoint("resunet-lite", "batch", polyp_dir, run / "global")
    out = tmp_path / "exp"
    res = run_cli(
        "export", str(run), "--int8", "--backend", "onnx", "--out", str(out), "--iters", "3", "--threads", "1"
    )
    assert res.returncode == 0, res.stderr + res.stdout
    man = load_manifest(out)  # verifies every sha256
    data = man.data
    assert set(data["artefacts"]) == {"onnx-fp32", "onnx-int8"}
    assert set(data["files"]) == {"model_fp32.onnx", "model_int8.onnx"}
    assert data["inputs"][0]["name"] == "image" and data["outputs"][0]["shape"] == ["batch", 1, SIZE, SIZE]
    assert data["preprocessing"]["size"] == SIZE and data["threshold"] == 0.5
    assert data["recommended"] in data["artefacts"]
    assert data["heldout"]["n"] > 0 and data["calibration"]["n"] > 0
    fp32 = data["artefacts"]["onnx-fp32"]
    assert fp32["parity"]["dice_mean"] > 0.99 and fp32["parity"]["max_abs_logit_diff"] < 1e-3
    assert "dice_vs_gt" in fp32["parity"] and "dice_vs_fp32" in data["artefacts"]["onnx-int8"]["parity"]
    assert fp32["latency"]["1"]["p50_ms"] > 0
    assert data["source_checkpoint_sha256"] and "recommended" in res.stdout


def test_export_without_data_asks_for_calib(tmp_path):
    ckpt = save_student_checkpoint(
        create_student("unet-s"), "unet-s", "batch", Preprocessing(size=SIZE), tmp_path / "c"
    )
    res = run_cli("export", str(ckpt), "--out", str(tmp_path / "exp"))
    assert res.returncode == 1
    assert "--calib" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert json.loads((ckpt / "student.json").read_text())["arch"] == "unet-s"


def test_calibration_and_heldout_follow_the_run_split(tmp_path, polyp_dir):
    ids = load_dataset(polyp_dir).ids
    split = {"server_labeled": ids[:3], "clients": [ids[3:6], ids[6:9]], "val": ids[20:23], "test": []}
    run = tmp_path / "run"
    run.mkdir()
    (run / "split.json").write_text(json.dumps(split))
    tiny_checkpoint("unet-s", "batch", polyp_dir, run / "global")
    info = read_checkpoint_info(run)
    calib, held = export_images(
        info.meta | {"dir": info.dir}, info.run_dir, info.prep, n_calib=64, n_heldout=8
    )
    assert calib.ids == ids[:9] and held.ids == ids[20:23]
    assert calib.x.shape == (9, 3, SIZE, SIZE) and calib.masks is None and len(held.masks) == 3
    other = tmp_path / "calib"  # --calib with a plain folder of images: deterministic 80/20 split
    other.mkdir()
    for p in sorted((polyp_dir / "images").glob("*.jpg"))[:10]:
        shutil.copy(p, other / p.name)
    calib, held = export_images({}, None, info.prep, calib_folder=other)
    assert len(calib.ids) == 8 and len(held.ids) == 2 and not set(calib.ids) & set(held.ids)
