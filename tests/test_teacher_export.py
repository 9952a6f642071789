"""The exported teacher in several variants (issue 17): ONNX FP32, OpenVINO FP32 / bf16 / INT8.

Fast tests: the recommendation rule, the variant choice, the folder checks (tiny real ONNX graphs).
Slow tests: one real `samfed teacher export` of LiteMedSAM at 256 px (NNCF INT8 calibrated on two
synthetic images), then real ONNX Runtime / OpenVINO sessions on it, also in a process where
torch cannot be imported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edge.manifest import hash_files
from edge.teacher_runtime import MANIFEST, VARIANTS, OnnxTeacher, choose_variant, stream_teacher_maps
from samfed.errors import SamfedError

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ["torch", "torchvision", "onnx", "nncf", "scipy", "safetensors", "timm", "segment_anything"]


def _variant(dice_mean: float, dice_min: float, s: float, gt: float | None = None) -> dict:
    parity = {"dice_mean": dice_mean, "dice_min": dice_min, "max_abs_prob_diff": 0.1}
    if gt is not None:
        parity["dice_vs_gt"] = gt
    return {"parity": parity, "s_per_image": s}


# ---- recommendation -------------------------------------------------------------------------------


def test_recommendation_picks_the_fastest_variant_whose_parity_holds():
    from samfed.teacher.export import recommend_variant

    variants = {
        "onnx-fp32": _variant(1.0, 1.0, 1.4),
        "openvino-fp32": _variant(1.0, 1.0, 1.0),
        "openvino-bf16": _variant(0.995, 0.96, 0.9),
        "openvino-int8": _variant(0.995, 0.90, 0.3),  # fastest, but one image's mask differs too much
    }
    best, reason, notes = recommend_variant(variants)
    assert best == "openvino-bf16" and "0.900" in " ".join(notes) and "fastest" in reason
    variants["openvino-int8"]["parity"]["dice_min"] = 0.97
    assert recommend_variant(variants)[0] == "openvino-int8"
    # Dice against ground truth may drop by at most 0.5 point below torch's
    variants["openvino-int8"]["parity"]["dice_vs_gt"] = 0.80
    best, _, notes = recommend_variant(variants, torch_dice_vs_gt=0.81)
    assert best == "openvino-bf16" and "ground truth" in notes[0]
    assert recommend_variant(variants, torch_dice_vs_gt=0.804)[0] == "openvino-int8"


def test_reduced_precision_needs_parity_on_enough_images():
    from samfed.teacher.export import recommend_variant

    variants = {"openvino-fp32": _variant(1.0, 1.0, 0.7), "openvino-bf16": _variant(1.0, 1.0, 0.4)}
    assert recommend_variant(variants, parity_images=16)[0] == "openvino-bf16"
    best, _, notes = recommend_variant(variants, parity_images=6)
    assert best == "openvino-fp32" and "6 images" in notes[0]


def test_recommendation_falls_back_when_parity_fails_or_was_not_measured():
    from samfed.teacher.export import recommend_variant

    failing = {"onnx-fp32": _variant(0.98, 0.97, 1.0), "openvino-int8": _variant(0.99, 0.5, 0.2)}
    best, reason, notes = recommend_variant(failing)
    assert best is None and "torch" in reason and len(notes) == 2
    assert recommend_variant({"onnx-fp32": {"encoder": "e.onnx"}})[0] is None


def test_auto_runs_the_recommendation_and_bf16_needs_a_cpu_with_bf16(tmp_path, monkeypatch):
    import edge.teacher_runtime as rt

    man = {"variants": {k: {"encoder": v.encoder} for k, v in VARIANTS.items()}, "recommended": None}
    assert choose_variant(tmp_path, man) == "onnx-fp32"  # nothing recommended: the ONNX reference
    man["recommended"] = "openvino-int8"
    assert choose_variant(tmp_path, man) == "openvino-int8"
    assert choose_variant(tmp_path, man, "onnxruntime") == "onnx-fp32"  # the older backend names
    man["recommended"] = "openvino-bf16"
    monkeypatch.setattr(rt, "cpu_supports_bf16", lambda: False)
    assert choose_variant(tmp_path, man) == "openvino-fp32"  # same IR, f32 on a CPU without BF16
    with pytest.raises(SamfedError, match="no BF16"):
        choose_variant(tmp_path, man, "openvino-bf16")
    with pytest.raises(SamfedError, match="no openvino-int8 variant"):
        choose_variant(tmp_path, {"variants": {"onnx-fp32": {"encoder": "e.onnx"}}}, "openvino-int8")
    with pytest.raises(SamfedError, match="Unknown teacher variant 'int4'"):
        choose_variant(tmp_path, man, "int4")
    with pytest.raises(SamfedError, match="unknown teacher variant 'int4'"):
        choose_variant(tmp_path, {"variants": {"int4": {"encoder": "e.onnx"}}})


# ---- folder checks on tiny real ONNX graphs --------------------------------------------------------


def _identity_onnx(path: Path, inputs: list[str], output: str) -> None:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", [inputs[0]], [output])
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs]
    out = helper.make_tensor_value_info(output, TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "g", ins, [out])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.fixture()
def tiny_export(tmp_path) -> Path:
    """A teacher folder of identity graphs with a complete, hashed manifest (loads, runs nothing useful)."""
    folder = tmp_path / "teacher"
    folder.mkdir()
    _identity_onnx(folder / "e.onnx", ["image"], "embeddings")
    _identity_onnx(folder / "b.onnx", ["embeddings", "box"], "logits")
    _identity_onnx(folder / "n.onnx", ["embeddings"], "logits")
    manifest = {
        "input": {"size": 256, "convention": "stretch-unit", "lowres": 256},
        "prompt": "full-box",
        "teacher_hash": "0" * 64,
        "encoder": "e.onnx",
        "decoders": {"none": "n.onnx", "box": "b.onnx"},
        "variants": {"onnx-fp32": {"encoder": "e.onnx"}},
        "files": hash_files(folder, ["e.onnx", "b.onnx", "n.onnx"]),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


def test_tampered_or_unhashed_teacher_files_are_refused(tiny_export):
    rt = OnnxTeacher(tiny_export, threads=1)
    assert rt.variant == "onnx-fp32" and rt.backend == "onnxruntime"
    manifest = json.loads((tiny_export / MANIFEST).read_text())
    shutil.copy(tiny_export / "n.onnx", tiny_export / "b.onnx")  # a valid graph, not the exported one
    with pytest.raises(SamfedError, match="sha256 hash mismatch for .*b.onnx"):
        OnnxTeacher(tiny_export)
    del manifest["files"]["b.onnx"]
    (tiny_export / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SamfedError, match="no sha256 for b.onnx"):
        OnnxTeacher(tiny_export)
    del manifest["files"]
    (tiny_export / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SamfedError, match="no sha256 for e.onnx, n.onnx, b.onnx"):
        OnnxTeacher(tiny_export)
    manifest["files"] = {"../e.onnx": "0" * 64}
    (tiny_export / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SamfedError, match="invalid file list"):
        OnnxTeacher(tiny_export)


def test_variant_files_must_fit_their_backend_and_stay_inside(tiny_export, tmp_path):
    manifest = json.loads((tiny_export / MANIFEST).read_text())
    manifest["variants"] = {"openvino-int8": {"encoder": "e.onnx"}}
    (tiny_export / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SamfedError, match="needs a .xml encoder"):
        OnnxTeacher(tiny_export, variant="openvino-int8")
    manifest["variants"] = {"openvino-int8": {"encoder": "../x.xml"}}
    (tiny_export / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SamfedError, match="inside the export folder"):
        OnnxTeacher(tiny_export)
    manifest["variants"] = ["onnx-fp32"]
    (tiny_export / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SamfedError, match="variants as an object"):
        OnnxTeacher(tiny_export)


def test_export_refuses_a_folder_of_something_else(tmp_path):
    from samfed.teacher.export import check_out_dir

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.toml").write_text("x")
    with pytest.raises(SamfedError, match="not a teacher export"):
        check_out_dir(tmp_path / "run")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SamfedError, match="is a file"):
        check_out_dir(tmp_path / "file")
    check_out_dir(tmp_path / "new")  # new and empty folders are fine
    assert (tmp_path / "run" / "config.toml").read_text() == "x"


# ---- a real export --------------------------------------------------------------------------------


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=1500, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, **kw,
    )  # fmt: skip


@pytest.fixture(scope="module")
def real_export(tmp_path_factory) -> Path:
    """`samfed teacher export litemedsam` at 256 px: INT8 calibrated on 2 synthetic images, parity on 2."""
    out = tmp_path_factory.mktemp("teacher-export") / "export"
    res = _cli(
        "teacher", "export", "litemedsam", "--out", str(out), "--calib-images", "2", "--parity-images", "2",
        "--latency-iters", "1", "--threads", "2",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "recommended" in res.stdout and "openvino-int8" in res.stdout
    return out


@pytest.mark.slow
def test_every_variant_exports_with_parity_latency_and_hashes(real_export):
    from samfed.teacher.export import recommend_variant

    man = json.loads((real_export / MANIFEST).read_text())
    expected = {"onnx-fp32", "openvino-fp32", "openvino-int8"}
    from edge.teacher_runtime import cpu_supports_bf16

    if cpu_supports_bf16():
        expected.add("openvino-bf16")
    assert set(man["variants"]) == expected
    for key, v in man["variants"].items():
        assert v["encoder"] == VARIANTS[key].encoder and v["backend"] == VARIANTS[key].backend
        assert {"dice_mean", "dice_min", "max_abs_prob_diff", "dice_vs_gt"} <= set(v["parity"])
        assert v["s_per_image"] > 0 and v["latency"]["2"]["p50_ms"] > 0
    assert man["variants"]["openvino-int8"]["calibration"]["images"] == 2
    fp32 = man["variants"]["openvino-fp32"]["parity"]
    assert fp32["dice_min"] >= 0.99 and fp32["max_abs_prob_diff"] < 1e-2  # same graph, f32: exact-ish
    assert man["parity"]["torch"]["s_per_image"] > 0 and man["parity"]["images"] == 2
    # the stored recommendation is the rule applied to the stored measurements
    assert man["recommended"] == recommend_variant(man["variants"], man["parity"]["dice_vs_gt"])[0]
    assert set(man["files"]) == {
        "teacher_encoder.onnx", "teacher_decoder_box.onnx", "teacher_decoder_none.onnx",
        "teacher_encoder_fp32.xml", "teacher_encoder_fp32.bin", "teacher_encoder_int8.xml",
        "teacher_encoder_int8.bin",
    }  # fmt: skip


@pytest.mark.slow
def test_runtime_loads_the_recommended_variant_without_torch(real_export):
    man = json.loads((real_export / MANIFEST).read_text())
    expected = man["recommended"] or "onnx-fp32"
    code = textwrap.dedent(f"""
        import sys
        for name in {BLOCKED!r}:
            sys.modules[name] = None  # any `import torch` now raises ImportError
        import numpy as np
        from edge.teacher_runtime import OnnxTeacher, stream_teacher_maps
        from samfed.teacher.cache import TeacherMapCache
        rt = OnnxTeacher({str(real_export)!r}, threads=2)
        images = [np.full((40 + 8 * i, 60, 3), 30 * i, np.uint8) for i in range(3)]
        cache = TeacherMapCache({str(real_export.parent / "c")!r})
        maps = stream_teacher_maps(rt, images.__getitem__, 3, cache, 64, batch_size=2)
        assert maps.shape == (3, 64, 64) and np.isfinite(maps).all()
        leaked = [m for m in sys.modules if m.split(".")[0] in {BLOCKED!r} and sys.modules[m] is not None]
        print("VARIANT", rt.variant, "LEAKED", leaked)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert f"VARIANT {expected} LEAKED []" in res.stdout


@pytest.mark.slow
def test_variants_match_torch_and_streaming_matches_teacher_maps(real_export, tmp_path):
    from samfed.data.synth import generate
    from samfed.teacher import TeacherMapCache, load_teacher, teacher_maps

    images = [generate("polyp", seed=5, index=i, size=256)[0] for i in range(3)]
    ref = load_teacher("litemedsam").predict_proba(images, 256)
    for variant in ("onnx-fp32", "openvino-fp32"):
        rt = OnnxTeacher(real_export, variant=variant, threads=2)
        got = rt.predict_proba(images, 256, batch_size=2)
        assert np.abs(got - ref).max() < 1e-2, variant
    rt = OnnxTeacher(real_export, variant="openvino-int8", threads=2)
    assert rt.hash != OnnxTeacher(real_export, variant="openvino-fp32", threads=2).hash  # own cache entries
    whole = teacher_maps(rt, images, None, 64)
    streamed = stream_teacher_maps(
        rt, images.__getitem__, 3, TeacherMapCache(tmp_path / "c"), 64, batch_size=2
    )
    assert np.array_equal(whole, streamed)
    again = stream_teacher_maps(rt, images.__getitem__, 3, TeacherMapCache(tmp_path / "c"), 64, batch_size=3)
    assert np.array_equal(again, streamed)  # read back from the cache


@pytest.mark.slow
def test_tampered_real_export_is_refused(real_export, tmp_path):
    copy = Path(shutil.copytree(real_export, tmp_path / "export"))
    with open(copy / "teacher_encoder_int8.bin", "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(SamfedError, match="sha256 hash mismatch for .*teacher_encoder_int8.bin"):
        OnnxTeacher(copy, variant="openvino-int8")
    OnnxTeacher(copy, variant="openvino-fp32", threads=1)  # the other variants' files are intact


@pytest.mark.slow
def test_dataset_maps_decode_as_the_runner_does(real_export, polyp_dir):
    from samfed.data.readers import load_dataset
    from samfed.engine.teacher import teacher_images
    from samfed.teacher import teacher_maps
    from samfed.teacher.maps import dataset_teacher_maps

    ds = load_dataset(polyp_dir)
    ids = ds.ids[:3]
    rt = OnnxTeacher(real_export, variant="openvino-fp32", threads=2)
    whole = teacher_maps(rt, teacher_images(ds, ids, rt), None, 64)
    assert np.array_equal(dataset_teacher_maps(rt, ds, ids, None, 64, batch_size=2), whole)


@pytest.mark.slow
def test_clinic_node_computes_maps_with_the_recommended_variant(real_export, tmp_path):
    from samfed.config import RunConfig
    from samfed.data.readers import load_dataset
    from samfed.data.synth import write_synthetic
    from samfed.engine.teacher import teacher_images
    from samfed.federation.client_app import NodeSettings, load_node_teacher, node_data, node_teacher_maps
    from samfed.teacher import teacher_maps

    data = write_synthetic("polyp", 2, tmp_path / "data", seed=3, size=64)
    ref = "0123456789abcdef" * 2  # a content digest, as the server sends it
    folder = Path(shutil.copytree(real_export, tmp_path / "work" / "assets" / ref))
    (folder / ".complete").write_text(ref)
    node = NodeSettings.from_node_config(
        {"data-path": str(data), "partition-id": 0, "work-dir": str(tmp_path / "work")}
    )
    spec = {"teacher-kind": "onnx", "teacher-ref": ref}
    teacher = load_node_teacher(node, spec, 2)
    man = json.loads((real_export / MANIFEST).read_text())
    assert teacher.variant == (man["recommended"] or "onnx-fp32")
    images = node_data(node, 64)
    maps = node_teacher_maps(node, images, spec, RunConfig(image_size=64), None, 2)
    assert maps.shape == (2, 64, 64)
    decoded = teacher_images(load_dataset(data), images.ids, teacher)
    assert np.array_equal(maps, teacher_maps(teacher, decoded, None, 64))
    forced = NodeSettings.from_node_config(
        {
            "data-path": str(data),
            "partition-id": 0,
            "work-dir": str(tmp_path / "work"),
            "teacher-backend": "onnxruntime",
        }
    )
    assert load_node_teacher(forced, spec, 1).variant == "onnx-fp32"


@pytest.mark.slow
def test_inprocess_run_computes_maps_with_the_cached_export_of_its_teacher(real_export, tmp_path):
    """teacher_runtime auto: a run whose teacher (pretrained LiteMedSAM, no fine-tuning) has an
    export in the cache computes its maps with the export's recommended variant; torch keeps torch;
    the two teachers' validation Dice agree."""
    from run_helpers import tiny

    from samfed.teacher.export import export_folder
    from samfed.train.runner import train

    man = json.loads((real_export / MANIFEST).read_text())
    cache = tmp_path / "cache"
    shutil.copytree(real_export, export_folder(cache / "teacher_exports", man["teacher_hash"]))
    cfg = tiny(method="samfed", teacher_mode="none", rounds=1, cache=str(cache))
    auto = train(cfg, tmp_path / "auto", progress=False).summary["teacher"]
    assert auto["maps_runtime"] == (man["recommended"] or "torch")
    torch_cfg = cfg.override(teacher_maps_runtime="torch")
    ref = train(torch_cfg, tmp_path / "torch", progress=False).summary["teacher"]
    assert ref["maps_runtime"] == "torch" and ref["hash"] == man["teacher_hash"]
    assert auto["val_dice"] == pytest.approx(ref["val_dice"], abs=0.02)


def test_parity_images_are_every_labeled_image_but_the_calibration_ones(polyp_dir):
    from samfed.data.readers import load_dataset
    from samfed.teacher.export import labeled_images
    from samfed.teacher.transforms import TeacherInput

    ds = load_dataset(polyp_dir)
    spec = TeacherInput(size=64)
    sets = labeled_images(ds, ds.ids[:20], spec, n_calib=4)
    assert (len(sets.calib), len(sets.parity), len(sets.masks)) == (4, 16, 16)
    assert len(labeled_images(ds, ds.ids[:10], spec).calib) == 4  # at most half of the 8 fine-tuning images
    calib, parity = {a.tobytes() for a in sets.calib}, {a.tobytes() for a in sets.parity}
    assert not calib & parity
