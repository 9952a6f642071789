"""Edge runtime: verified manifests, ONNX Runtime / OpenVINO sessions, `samfed predict` (also with
torch made unimportable), corrupt inputs, and `samfed bench`. One tiny exported student is shared."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from export_helpers import SIZE, tiny_checkpoint
from PIL import Image

from edge.manifest import load_manifest
from edge.outputs import CONTOUR, overlay, preview
from edge.png import encode_png
from edge.predictor import Predictor, sigmoid
from export.build import export_student
from export.checkpoint import load_student_checkpoint
from samfed.data import load_dataset, read_image
from samfed.errors import SamfedError
from samfed.metrics import dice
from samfed.preprocess import prob_to_original, to_input

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=600, cwd=ROOT
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory, polyp_dir) -> Path:
    """unet-s at 64 px exported to all four artefacts (ONNX/OpenVINO x FP32/INT8)."""
    tmp = tmp_path_factory.mktemp("edge")
    tiny_checkpoint("unet-s", "batch", polyp_dir, tmp / "run" / "global")
    out = tmp / "export"
    export_student(
        tmp / "run", out, int8=True, backend="all", n_calib=8, n_heldout=4, threads=1,
        latency_iters=2, nncf_subset=4, log=lambda _: None,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def images(polyp_dir) -> list[tuple[str, np.ndarray]]:
    """Eight synthetic endoscopy images of several resolutions."""
    return [(s.id, read_image(s.image)) for s in load_dataset(polyp_dir).samples[:8]]


def test_manifest_hashes_verified_and_tampering_refused(exported, polyp_dir, tmp_path):
    man = load_manifest(exported)
    assert set(man.artefacts) == {"onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8"}
    assert len(man.data["files"]) == 6  # 2 .onnx + 2 x (.xml + .bin)
    bad = tmp_path / "tampered"
    shutil.copytree(exported, bad)
    blob = bytearray((bad / "openvino_int8.bin").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (bad / "openvino_int8.bin").write_bytes(bytes(blob))
    with pytest.raises(SamfedError, match="hash mismatch"):
        load_manifest(bad)
    res = run_cli("predict", str(bad), str(polyp_dir / "images"), "--out", str(tmp_path / "o"))
    assert res.returncode == 1 and "hash mismatch" in res.stderr and "Traceback" not in res.stderr
    (bad / "model_fp32.onnx").unlink()
    with pytest.raises(SamfedError, match="missing"):
        load_manifest(bad)


def test_predictor_matches_torch_at_original_size(exported, images):
    model, meta = load_student_checkpoint(load_manifest(exported).data["source_checkpoint"])
    pred = Predictor.from_model(exported, "onnxruntime", "fp32", threads=1, batch=3)
    out = pred.predict([im for _, im in images])
    assert {im.shape[:2] for _, im in images} == {o.prob.shape for o in out} and len(
        {o.prob.shape for o in out}
    ) > 1
    for (_, im), o in zip(images, out, strict=True):
        assert o.mask.dtype == bool and o.prob.dtype == np.float32 and 0 <= o.prob.min() <= o.prob.max() <= 1
        with torch.no_grad():  # torch reference through the shared preprocessing
            logit = model(torch.from_numpy(to_input(im, meta["prep"]))[None]).numpy()[0, 0]
        ref = prob_to_original(sigmoid(logit), im.shape[:2])
        assert np.abs(ref - o.prob).max() < 1e-3
        assert dice(o.mask, ref >= 0.5) > 0.99
        assert 0.02 < o.mask.mean() < 0.98  # a real segmentation, not an empty map
    one = Predictor.from_model(exported, "onnxruntime", "fp32", threads=1, batch=1).predict([images[0][1]])
    np.testing.assert_allclose(one[0].prob, out[0].prob, atol=1e-5)


def test_every_backend_and_precision_runs(exported, images):
    man = load_manifest(exported)
    assert man.select().key == man.recommended
    probs = {}
    for backend in ("onnxruntime", "openvino"):
        for precision in ("fp32", "int8"):
            pred = Predictor.from_model(exported, backend, precision, threads=1, batch=4)
            assert pred.artefact == f"{'onnx' if backend == 'onnxruntime' else backend}-{precision}"
            probs[pred.artefact] = np.stack([p.prob for p in pred.predict([images[0][1]] * 2)])
    np.testing.assert_allclose(probs["openvino-fp32"], probs["onnx-fp32"], atol=1e-3)  # f32 hint: no bf16
    for key in ("onnx-int8", "openvino-int8"):
        assert dice(probs[key] >= 0.5, probs["onnx-fp32"] >= 0.5) > 0.8
    with pytest.raises(SamfedError, match="Unknown backend"):
        man.select("tensorrt")
    bare = exported / "model_fp32.onnx"
    with pytest.warns(UserWarning, match="no manifest"):
        pred = Predictor.from_model(bare, threads=1)
    assert pred.prep.size == SIZE
    np.testing.assert_allclose(pred.predict([images[0][1]])[0].prob, probs["onnx-fp32"][0], atol=1e-5)


def _folder_with_corrupt(polyp_dir: Path, dst: Path, n: int = 5) -> list[Path]:
    dst.mkdir()
    imgs = sorted((polyp_dir / "images").glob("*.jpg"))[:n]
    for p in imgs:
        shutil.copy(p, dst / p.name)
    (dst / "broken.jpg").write_bytes(imgs[0].read_bytes()[:200])  # truncated JPEG
    return imgs


def test_predict_cli_writes_outputs_and_skips_corrupt(exported, polyp_dir, tmp_path):
    imgs = _folder_with_corrupt(polyp_dir, tmp_path / "in")
    out = tmp_path / "out"
    res = run_cli(
        "predict", str(exported), str(tmp_path / "in"), "--out", str(out), "--batch", "2", "--threads", "1",
        "--overlay-size", "64",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    skipped = [ln for ln in res.stderr.splitlines() if "skipped" in ln]
    assert len(skipped) == 1 and "broken.jpg" in skipped[0]
    rows = list(csv.DictReader((out / "predictions.csv").read_text().splitlines()))
    assert [r["id"] for r in rows] == [p.stem for p in imgs]
    for p, row in zip(imgs, rows, strict=True):
        w, h = Image.open(p).size
        mask = np.asarray(Image.open(out / "masks" / f"{p.stem}.png")) > 127
        assert mask.shape == (h, w) and (int(row["width"]), int(row["height"])) == (w, h)
        assert int(row["area_px"]) == mask.sum() and abs(float(row["area_fraction"]) - mask.mean()) < 1e-5
        assert 0.5 <= float(row["mean_confidence"]) <= 1.0
        ow, oh = Image.open(out / "overlays" / f"{p.stem}.png").size  # preview, longest side 64 px
        assert max(ow, oh) == min(64, max(w, h)) and abs(ow / oh - w / h) < 0.05
    summary = json.loads((out / "predict_summary.json").read_text())
    assert summary["processed"] == 5 and summary["skipped"][0]["path"].endswith("broken.jpg")


def test_predict_cli_fails_when_nothing_readable(exported, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"not a png")
    res = run_cli("predict", str(exported), str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    assert res.returncode == 1 and "None of the 1 images" in res.stderr


BLOCKED = ["torch", "torchvision", "onnx", "nncf", "scipy", "safetensors", "timm", "flwr", "segment_anything"]


def test_predict_works_when_torch_cannot_be_imported(exported, polyp_dir, tmp_path):
    _folder_with_corrupt(polyp_dir, tmp_path / "in", n=3)
    code = textwrap.dedent(f"""
        import sys
        for name in {BLOCKED!r}:
            sys.modules[name] = None  # any `import torch` now raises ImportError
        from cli import main
        for backend, precision in [("onnxruntime", "int8"), ("openvino", "fp32")]:
            try:
                main(["predict", {str(exported)!r}, {str(tmp_path / "in")!r}, "--out",
                      {str(tmp_path)!r} + "/out-" + backend, "--backend", backend, "--precision", precision])
            except SystemExit as exc:
                assert not exc.code, exc.code
        leaked = [m for m in sys.modules if m.split(".")[0] in {BLOCKED!r} and sys.modules[m] is not None]
        print("LEAKED", leaked)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "LEAKED []" in res.stdout
    for backend in ("onnxruntime", "openvino"):
        assert len(list((tmp_path / f"out-{backend}" / "masks").glob("*.png"))) == 3


@pytest.mark.slow
def test_bench_cli_writes_tables(exported, tmp_path):
    res = run_cli("bench", str(exported), "--iters", "3", "--warmup", "1", "--batch", "1,2", "--threads", "1",
                  "--out", str(tmp_path))  # fmt: skip
    assert res.returncode == 0, res.stderr
    result = json.loads((tmp_path / "bench.json").read_text())
    assert list(result["results"]) == [
        "torch-fp32",
        "onnx-fp32",
        "onnx-int8",
        "openvino-fp32",
        "openvino-int8",
    ]
    for r in result["results"].values():
        assert set(r) == {"1", "2"} and r["2"]["p50_ms"] > 0 and r["1"]["iters"] == 3
    assert result["interleaved"] and result["threads"] == 1 and "flags" in result["cpu"]
    assert {"speedup_vs_torch-fp32", "speedup_vs_onnx-fp32"} <= set(result["speedups"])
    assert "| onnx-int8 | 1 |" in (tmp_path / "bench.md").read_text()


def test_png_writer_and_overlay():
    rng = np.random.default_rng(0)
    for arr in (
        rng.integers(0, 256, (37, 53, 3), dtype=np.uint8),
        rng.integers(0, 256, (1, 5), dtype=np.uint8),
    ):
        path_img = Image.open(io.BytesIO(encode_png(arr)))
        np.testing.assert_array_equal(np.asarray(path_img), arr)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[10:30, 5:25] = True
    out = overlay(img, mask)
    np.testing.assert_array_equal(out[~mask], img[~mask])  # outside untouched
    assert (out[10, 10] == CONTOUR).all() and (out[20, 15] != CONTOUR).any()  # ring, tinted inside
    assert not (out[20, 15] == img[20, 15]).all()
    np.testing.assert_array_equal(overlay(img, np.zeros_like(mask)), img)
    small, small_mask = preview(img, mask, 25)
    assert small.shape == (20, 25, 3) and small_mask.shape == (20, 25) and small_mask.dtype == bool
    assert small_mask[5:15, 3:12].all() and not small_mask[:4].any()
    assert preview(img, mask, 0)[0] is img and preview(img, mask, 50)[1] is mask
