"""The clinic side treats an export folder and an output folder as untrusted (issue 11).

Manifests: every model file and every file a model opens (OpenVINO .bin, ONNX external data)
stays inside the export folder and carries a verified sha256; structure, preprocessing and
threshold are validated and checked against the model; Ed25519 signatures say who produced an
export. `samfed predict` never replaces a file it did not write. Real ONNX Runtime / OpenVINO
sessions on one tiny export (ONNX + OpenVINO FP32, 64 px).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from export_helpers import SIZE, tiny_checkpoint
from PIL import Image, ImageOps

from edge.manifest import MANIFEST_NAME, load_manifest, sha256_file
from edge.onnx_external import external_data_locations
from edge.pipeline import output_ids, run_files
from edge.predict_out import JOURNAL_NAME, RECORD_NAME
from edge.predictor import Predictor
from edge.signature import SIGNATURE_NAME
from export.build import export_student
from export.manifest_writer import default_key_path, load_or_create_key, sign_export, write_manifest
from samfed.errors import SamfedError
from samfed.preprocess import Preprocessing

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, polyp_dir) -> Path:
    """unet-s at 64 px exported to ONNX FP32 and OpenVINO FP32 (no INT8: fast)."""
    tmp = tmp_path_factory.mktemp("hardening")
    tiny_checkpoint("unet-s", "batch", polyp_dir, tmp / "run" / "global")
    out = tmp / "export"
    export_student(
        tmp / "run", out, int8=False, backend="all", n_calib=4, n_heldout=2, threads=1,
        latency_iters=1, log=lambda _: None,
    )  # fmt: skip
    return out


@pytest.fixture()
def export_copy(exported, tmp_path) -> Path:
    """A private copy of the export to tamper with."""
    return Path(shutil.copytree(exported, tmp_path / "export"))


@pytest.fixture(scope="module")
def few_images(polyp_dir, tmp_path_factory) -> Path:
    """A folder with 4 images of the synthetic polyp set."""
    dst = tmp_path_factory.mktemp("few")
    for p in sorted((polyp_dir / "images").glob("*.jpg"))[:4]:
        shutil.copy(p, dst / p.name)
    return dst


def edit(export_dir: Path, change) -> dict:
    """Apply `change(manifest dict)` and write the manifest back; returns the new dict."""
    data = json.loads((export_dir / MANIFEST_NAME).read_text())
    change(data)
    (export_dir / MANIFEST_NAME).write_text(json.dumps(data, indent=1))
    return data


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the samfed CLI in this process: (exit code, stdout, stderr). Any exception but a
    SamfedError (printed as one line by cli.main) propagates and fails the test."""
    from cli import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    res = capsys.readouterr()
    return code, res.out, " ".join(res.err.split())


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 1 and err.count("error:") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


# --- 1. every file a model needs is inside the export folder and hashed ---------------------------


def test_artefact_outside_the_folder_is_refused(export_copy, tmp_path, few_images, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = outside / "evil.onnx"
    shutil.copy(export_copy / "model_fp32.onnx", evil)
    digest = sha256_file(evil)

    def point_to(name: str):
        def change(d):
            d["artefacts"]["onnx-fp32"]["path"] = name
            d["artefacts"]["onnx-fp32"]["files"] = [name]
            d["files"][name] = digest

        return change

    edit(export_copy, point_to("../outside/evil.onnx"))
    with pytest.raises(SamfedError, match="inside the export folder"):
        load_manifest(export_copy)
    code, _, err = cli(capsys, "predict", str(export_copy), str(few_images), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "inside the export folder")
    assert not (tmp_path / "o").exists()

    edit(export_copy, point_to(str(evil)))  # absolute path: was a ValueError traceback
    with pytest.raises(SamfedError, match="inside the export folder"):
        load_manifest(export_copy)
    code, _, err = cli(capsys, "predict", str(export_copy), str(few_images), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "not a valid samfed export manifest")


def test_symlink_out_of_the_folder_is_refused(export_copy, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(export_copy / "model_fp32.onnx", outside)
    (export_copy / "model_fp32.onnx").symlink_to(outside)  # same bytes, same sha256
    with pytest.raises(SamfedError, match="outside the export folder"):
        load_manifest(export_copy)
    (export_copy / "model_fp32.onnx").unlink()
    (export_copy / "model_fp32.onnx").symlink_to("model_fp32.onnx")  # a loop
    with pytest.raises(SamfedError, match="not a valid samfed export manifest"):
        load_manifest(export_copy)


def test_openvino_bin_without_hash_is_refused(export_copy, few_images, capsys, tmp_path):
    blob = bytearray((export_copy / "openvino_fp32.bin").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (export_copy / "openvino_fp32.bin").write_bytes(bytes(blob))

    def drop_bin(d):
        del d["files"]["openvino_fp32.bin"]
        d["artefacts"]["openvino-fp32"]["files"] = ["openvino_fp32.xml"]

    edit(export_copy, drop_bin)  # the .xml's .bin is required even when the manifest does not list it
    with pytest.raises(SamfedError, match="no sha256 for openvino_fp32.bin"):
        load_manifest(export_copy)
    code, _, err = cli(
        capsys, "predict", str(export_copy), str(few_images), "--out", str(tmp_path / "o"),
        "--backend", "openvino",
    )  # fmt: skip
    assert_one_line_error(code, err, "no sha256 for openvino_fp32.bin")


def _to_external(model: Path, location: str) -> None:
    """Rewrite `model` with its weights in `location` (relative to the model's folder)."""
    import onnx

    m = onnx.load(model)
    onnx.save_model(m, model, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)  # fmt: skip


def test_onnx_external_data_must_be_inside_and_hashed(export_copy, few_images, tmp_path):
    import onnx

    model = export_copy / "model_fp32.onnx"
    reference = Predictor.from_model(export_copy, "onnxruntime", threads=1).predict(
        [np.asarray(Image.open(next(few_images.iterdir())).convert("RGB"))]
    )[0]
    _to_external(model, "weights.data")
    assert external_data_locations(model) == {"weights.data"}

    def rehash(d):
        d["files"]["model_fp32.onnx"] = sha256_file(model)

    edit(export_copy, rehash)
    with pytest.raises(SamfedError, match="no sha256 for weights.data"):
        load_manifest(export_copy)

    def add_data(d):
        d["files"]["weights.data"] = sha256_file(export_copy / "weights.data")

    edit(export_copy, add_data)
    pred = Predictor.from_model(export_copy, "onnxruntime", threads=1)  # hashed and inside: runs
    image = np.asarray(Image.open(next(few_images.iterdir())).convert("RGB"))
    np.testing.assert_allclose(pred.predict([image])[0].prob, reference.prob, atol=1e-5)
    (export_copy / "weights.data").write_bytes(b"\0" * (export_copy / "weights.data").stat().st_size)
    with pytest.raises(SamfedError, match="hash mismatch"):
        load_manifest(export_copy)

    # a location that leaves the folder, hashed or not, is refused
    m = onnx.load(model, load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../outside.data"
    onnx.save_model(m, model)
    shutil.move(export_copy / "weights.data", tmp_path / "outside.data")

    def rehash_only_model(d):
        rehash(d)
        del d["files"]["weights.data"]

    edit(export_copy, rehash_only_model)
    with pytest.raises(SamfedError, match="external data '../outside.data'"):
        load_manifest(export_copy)


def test_corrupt_onnx_protobuf_is_one_line(export_copy):
    (export_copy / "model_fp32.onnx").write_bytes(b"\x0a\xff\xff\xff\xff\x0f")  # field length overflows

    def rehash(d):
        d["files"]["model_fp32.onnx"] = sha256_file(export_copy / "model_fp32.onnx")

    edit(export_copy, rehash)
    with pytest.raises(SamfedError, match="not a valid ONNX model file"):
        load_manifest(export_copy)


# --- manifests are untrusted JSON ----------------------------------------------------------------


def _set(path: str, value):
    def change(d):
        *parents, last = path.split("/")
        for p in parents:
            d = d[p]
        d[last] = value

    return change


def _delete(path: str):
    def change(d):
        *parents, last = path.split("/")
        for p in parents:
            d = d[p]
        del d[last]

    return change


STRUCTURE = {
    "format": _set("format", "samfed-export/999"),
    "files-list": _set("files", ["model_fp32.onnx"]),
    "digest-short": _set("files/model_fp32.onnx", "abc"),
    "digest-int": _set("files/model_fp32.onnx", 5),
    "artefacts-empty": _set("artefacts", {}),
    "artefact-list": _set("artefacts/onnx-fp32", ["model_fp32.onnx"]),
    "backend": _set("artefacts/onnx-fp32/backend", "tensorrt"),
    "precision": _set("artefacts/onnx-fp32/precision", "fp64"),
    "path-int": _set("artefacts/onnx-fp32/path", 7),
    "path-backslash": _set("artefacts/onnx-fp32/path", "..\\model_fp32.onnx"),
    "suffix": _set("artefacts/openvino-fp32/path", "model_fp32.onnx"),
    "artefact-files": _set("artefacts/onnx-fp32/files", "model_fp32.onnx"),
    "recommended": _set("recommended", "onnx-int8"),
    "no-threshold": _delete("threshold"),
    "no-preprocessing": _delete("preprocessing"),
}


@pytest.mark.parametrize("case", list(STRUCTURE))
def test_malformed_manifest_is_one_clear_error(export_copy, case):
    edit(export_copy, STRUCTURE[case])
    with pytest.raises(SamfedError, match="is not a valid samfed export manifest"):
        load_manifest(export_copy)


def test_manifest_bytes_and_top_level_are_checked(export_copy):
    path = export_copy / MANIFEST_NAME
    for raw in (b"[1, 2]", b"\xff\xfe not utf-8", b'{"format": "a", "format": "samfed-export/1"}', b"{"):
        path.write_bytes(raw)
        with pytest.raises(SamfedError, match="is not a valid samfed export manifest"):
            load_manifest(export_copy)


# --- 2. preprocessing and threshold are validated against the model ------------------------------

BAD_VALUES = {
    "threshold-5": _set("threshold", 5.0),
    "threshold-nan": _set("threshold", float("nan")),
    "threshold-0": _set("threshold", 0),
    "threshold-1": _set("threshold", 1.0),
    "threshold-str": _set("threshold", "0.5"),
    "threshold-bool": _set("threshold", True),
    "std-0": _set("preprocessing/std", [0.229, 0.0, 0.225]),
    "std-negative": _set("preprocessing/std", [-0.2, 0.2, 0.2]),
    "std-inf": _set("preprocessing/std", [float("inf"), 0.2, 0.2]),
    "mean-nan": _set("preprocessing/mean", [float("nan"), 0.4, 0.4]),
    "mean-two": _set("preprocessing/mean", [0.4, 0.4]),
    "mean-str": _set("preprocessing/mean", "0.4"),
    "size-0": _set("preprocessing/size", 0),
    "size-str": _set("preprocessing/size", "64"),
    "size-bool": _set("preprocessing/size", True),
    "size-float": _set("preprocessing/size", 64.0),
    "size-huge": _set("preprocessing/size", 10**9),
    "resize-unknown": _set("preprocessing/resize", "letterbox"),
    "extra-field": _set("preprocessing/pad", 0),
    "missing-field": _delete("preprocessing/resize"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_preprocessing_or_threshold_is_refused_at_load(export_copy, case):
    edit(export_copy, BAD_VALUES[case])
    with pytest.raises(SamfedError, match="is not a valid samfed export manifest"):
        load_manifest(export_copy)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_size_must_match_the_models_input(export_copy, backend, few_images, capsys, tmp_path):
    edit(export_copy, _set("preprocessing/size", 2 * SIZE))  # was an OpenVINO traceback
    with pytest.raises(SamfedError, match=f"takes {SIZE}x{SIZE} px inputs but the preprocessing resizes"):
        Predictor.from_model(export_copy, backend, threads=1)
    code, _, err = cli(
        capsys,
        "predict",
        str(export_copy),
        str(few_images),
        "--out",
        str(tmp_path / "o"),
        "--backend",
        backend,
    )
    assert_one_line_error(code, err, "does not fit its preprocessing")
    assert not (tmp_path / "o").exists()


def test_predictor_checks_values_given_directly(exported):
    sess = Predictor.from_model(exported, "onnxruntime", threads=1).session
    for prep, threshold in [
        (Preprocessing(size=SIZE, std=(0.0, 1.0, 1.0)), 0.5),
        (Preprocessing(size=SIZE), 2.0),
    ]:
        with pytest.raises(SamfedError, match="Cannot run"):
            Predictor(sess, prep, threshold)


# --- 3. signatures ---------------------------------------------------------------------------------


def test_signing_key_is_private_and_the_signature_names_the_exporter(export_copy, tmp_path, monkeypatch):
    key = tmp_path / "keys" / "signing_key.pem"
    fp = sign_export(export_copy, key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.with_suffix(".pub").is_file()
    man = load_manifest(export_copy)
    assert man.signer == fp and fp.startswith("SHA256:") and len(fp) == 71
    for trusted in (str(key.with_suffix(".pub")), fp, fp.removeprefix("SHA256:").upper()):
        assert load_manifest(export_copy, trusted_keys=[trusted]).signer == fp
    assert sign_export(export_copy, key) == fp  # the same key is reused, not replaced

    other = tmp_path / "other.pem"
    other_fp = sign_export(Path(shutil.copytree(export_copy, tmp_path / "other-export")), other)
    with pytest.raises(SamfedError, match="not by a trusted key"):
        load_manifest(export_copy, trusted_keys=[other_fp])
    with pytest.raises(SamfedError, match="neither a key fingerprint"):
        load_manifest(export_copy, trusted_keys=["nobody"])
    with pytest.raises(SamfedError, match="not a PEM Ed25519 public key"):
        load_manifest(export_copy, trusted_keys=[str(key)])  # the private key is not a public key

    monkeypatch.setenv("SAMFED_SIGNING_KEY", str(tmp_path / "env.pem"))
    assert default_key_path() == tmp_path / "env.pem"
    monkeypatch.delenv("SAMFED_SIGNING_KEY")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert default_key_path() == tmp_path / "cfg" / "samfed" / "signing_key.pem"

    key.chmod(0o644)
    with pytest.raises(SamfedError, match="accessible by other users"):
        load_or_create_key(key)
    (tmp_path / "junk.pem").write_text("not a key")
    (tmp_path / "junk.pem").chmod(0o600)
    with pytest.raises(SamfedError, match="not an unencrypted PEM Ed25519 private key"):
        load_or_create_key(tmp_path / "junk.pem")


def test_changed_or_foreign_signature_is_refused(export_copy, tmp_path):
    sign_export(export_copy, tmp_path / "k.pem")
    manifest = export_copy / MANIFEST_NAME
    signed = manifest.read_bytes()
    manifest.write_bytes(signed.replace(b'"threshold": 0.5', b'"threshold": 0.45'))  # still valid JSON
    assert manifest.read_bytes() != signed
    with pytest.raises(SamfedError, match="does not match the manifest"):
        load_manifest(export_copy)  # refused even without --trusted-key
    manifest.write_bytes(signed)
    sig = json.loads((export_copy / SIGNATURE_NAME).read_text())
    for broken in ({**sig, "public_key": "AAAA"}, {**sig, "signature": 5}, {**sig, "algorithm": "rsa"}, []):
        (export_copy / SIGNATURE_NAME).write_text(json.dumps(broken))
        with pytest.raises(SamfedError, match="Signature file"):
            load_manifest(export_copy)
    (export_copy / SIGNATURE_NAME).write_bytes(b"\xff")
    with pytest.raises(SamfedError, match="not readable JSON"):
        load_manifest(export_copy)
    (export_copy / SIGNATURE_NAME).unlink()
    assert load_manifest(export_copy).signer is None  # unsigned: allowed ...
    with pytest.raises(SamfedError, match="is not signed"):
        load_manifest(export_copy, trusted_keys=[str(tmp_path / "k.pub")])  # ... unless a key is required


def test_rewriting_the_manifest_drops_the_old_signature(export_copy, tmp_path):
    sign_export(export_copy, tmp_path / "k.pem")
    data = json.loads((export_copy / MANIFEST_NAME).read_text())
    write_manifest(
        export_copy, arch=data["arch"], norm=data["norm"], prep=Preprocessing(size=SIZE), threshold=0.5,
        artefacts=data["artefacts"], recommended=data["recommended"], recommendation_reason="",
        warnings=[],
    )  # fmt: skip
    assert not (export_copy / SIGNATURE_NAME).exists()
    assert SIGNATURE_NAME not in json.loads((export_copy / MANIFEST_NAME).read_text())["files"]
    load_manifest(export_copy)


def test_predict_reports_and_requires_signatures(export_copy, few_images, tmp_path, capsys):
    code, out, err = cli(capsys, "predict", str(export_copy), str(few_images), "--out", str(tmp_path / "a"))
    assert code == 0 and "not signed" in err
    fp = sign_export(export_copy, tmp_path / "k.pem")
    code, out, err = cli(
        capsys, "predict", str(export_copy), str(few_images), "--out", str(tmp_path / "b"),
        "--trusted-key", str(tmp_path / "k.pub"),
    )  # fmt: skip
    assert code == 0 and f"signed by {fp}" in " ".join(out.split())
    assert json.loads((tmp_path / "b" / "predict_summary.json").read_text())["signer"] == fp
    code, _, err = cli(
        capsys, "predict", str(export_copy), str(few_images), "--out", str(tmp_path / "c"),
        "--trusted-key", "SHA256:" + "0" * 64,
    )  # fmt: skip
    assert_one_line_error(code, err, "not by a trusted key")
    code, _, err = cli(
        capsys, "predict", str(export_copy / "model_fp32.onnx"), str(few_images),
        "--out", str(tmp_path / "d"), "--trusted-key", fp,
    )  # fmt: skip
    assert_one_line_error(code, err, "carries no signature")
    assert not any((tmp_path / n).exists() for n in "cd")


def test_export_cli_signs_with_the_given_key(exported, tmp_path, capsys):
    run = Path(load_manifest(exported).data["source_run"])
    key = tmp_path / "keys" / "exporter.pem"
    code, out, _ = cli(
        capsys, "export", str(run), "--out", str(tmp_path / "exp"), "--backend", "onnx", "--threads", "1",
        "--calib-n", "4", "--heldout-n", "2", "--iters", "1", "--signing-key", str(key),
    )  # fmt: skip
    assert code == 0
    fp = load_manifest(tmp_path / "exp", trusted_keys=[str(key.with_suffix(".pub"))]).signer
    assert fp and fp in " ".join(out.split())
    key.write_text("junk")
    code, _, err = cli(capsys, "export", str(run), "--out", str(tmp_path / "exp2"), "--signing-key", str(key))
    assert_one_line_error(code, err, "not an unencrypted PEM Ed25519")  # checked before any export work
    assert not (tmp_path / "exp2").exists()


# --- 4. predict never replaces a file it did not write --------------------------------------------


def test_predict_into_a_dataset_is_refused(exported, polyp_dir, tmp_path, capsys):
    data = Path(shutil.copytree(polyp_dir, tmp_path / "data"))
    before = {p: p.read_bytes() for p in (data / "masks").iterdir()}
    code, _, err = cli(capsys, "predict", str(exported), str(data / "images"), "--out", str(data))
    assert_one_line_error(code, err, "holds no earlier `samfed predict` output")
    assert {p: p.read_bytes() for p in (data / "masks").iterdir()} == before
    assert not (data / RECORD_NAME).exists()
    (tmp_path / "file").write_text("x")
    code, _, err = cli(
        capsys, "predict", str(exported), str(data / "images"), "--out", str(tmp_path / "file")
    )
    assert_one_line_error(code, err, "is not a folder")


def _csv_ids(out: Path) -> list[str]:
    return [r["id"] for r in csv.DictReader((out / "predictions.csv").read_text().splitlines())]


def test_rerun_needs_overwrite_which_replaces_only_predicts_files(exported, few_images, tmp_path, capsys):
    out = tmp_path / "out"
    imgs = sorted(few_images.iterdir())
    assert cli(capsys, "predict", str(exported), *map(str, imgs), "--out", str(out))[0] == 0
    (out / "notes.txt").write_text("mine")
    (out / "masks" / "reviewed.png").write_bytes(b"a clinician's file")
    code, _, err = cli(capsys, "predict", str(exported), str(imgs[0]), "--out", str(out))
    assert_one_line_error(code, err, "--overwrite", "--resume")
    assert _csv_ids(out) == [p.stem for p in imgs]

    code, _, _ = cli(capsys, "predict", str(exported), *map(str, imgs[:2]), "--out", str(out), "--overwrite")
    assert code == 0
    assert _csv_ids(out) == [p.stem for p in imgs[:2]]
    masks = sorted(p.name for p in (out / "masks").iterdir())
    assert masks == sorted([f"{p.stem}.png" for p in imgs[:2]] + ["reviewed.png"])  # no stale masks
    assert len(list((out / "overlays").iterdir())) == 2
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "masks" / "reviewed.png").read_bytes() == b"a clinician's file"

    # a file predict would write but did not is never replaced
    foreign = out / "masks" / f"{imgs[3].stem}.png"
    foreign.write_bytes(b"not predict's")
    code, _, err = cli(capsys, "predict", str(exported), *map(str, imgs), "--out", str(out), "--overwrite")
    assert_one_line_error(code, err, "was not written by samfed predict")
    assert foreign.read_bytes() == b"not predict's" and _csv_ids(out) == [p.stem for p in imgs[:2]]

    code, _, err = cli(
        capsys, "predict", str(exported), str(out / "overlays"), "--out", str(out), "--overwrite"
    )
    assert_one_line_error(code, err, "is an output of the earlier predict run")
    code, _, err = cli(
        capsys, "predict", str(exported), str(imgs[0]), "--out", str(out), "--overwrite", "--resume"
    )
    assert_one_line_error(code, err, "exclude each other")


def test_overwrite_only_deletes_inside_the_output_folder(exported, few_images, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(capsys, "predict", str(exported), str(few_images), "--out", str(out))[0] == 0
    victim = tmp_path / "victim.png"
    victim.write_text("keep")
    rec = json.loads((out / RECORD_NAME).read_text())
    rec["images"][0]["id"] = "../../victim"
    (out / RECORD_NAME).write_text(json.dumps(rec))
    code, _, err = cli(capsys, "predict", str(exported), str(few_images), "--out", str(out), "--overwrite")
    assert_one_line_error(code, err, "not a valid samfed predict record")
    assert victim.read_text() == "keep"


def test_symlinks_out_of_the_output_folder_are_refused(exported, polyp_dir, tmp_path, capsys):
    data = Path(shutil.copytree(polyp_dir, tmp_path / "data"))
    imgs = sorted((data / "images").glob("*.jpg"))[:2]
    out = tmp_path / "out"
    assert cli(capsys, "predict", str(exported), *map(str, imgs), "--out", str(out), "--no-overlays")[0] == 0
    shutil.rmtree(out / "masks")
    for img in imgs:  # ground truth stored under the very names predict uses
        Image.open(data / "masks" / img.name).save(data / "masks" / f"{img.stem}.png")
    (out / "masks").symlink_to(data / "masks")  # the earlier run's mask names now lead to ground truth
    before = {p: p.read_bytes() for p in (data / "masks").iterdir()}
    for flag in ("--overwrite", "--resume"):
        code, _, err = cli(
            capsys, "predict", str(exported), *map(str, imgs), "--out", str(out), "--no-overlays", flag
        )
        assert_one_line_error(code, err, "leads outside the output folder")
    assert {p: p.read_bytes() for p in (data / "masks").iterdir()} == before


def _predictor(exported: Path, threshold: float | None = None) -> Predictor:
    pred = Predictor.from_model(exported, "onnxruntime", threads=1, batch=2)
    if threshold is not None:
        pred.threshold = threshold
    return pred


def test_resume_keeps_finished_images_and_rebuilds_the_csv(exported, few_images, tmp_path):
    out = tmp_path / "out"
    paths = sorted(few_images.iterdir())
    full = run_files(_predictor(exported), paths, out, workers=1)
    assert full.processed == 4
    rows = (out / "predictions.csv").read_text()
    lines = (out / JOURNAL_NAME).read_text().splitlines()
    assert len(lines) == 4
    # as if killed while the third image was being written: torn journal line, no CSV yet
    (out / JOURNAL_NAME).write_text("\n".join(lines[:2]) + "\n" + lines[2][:15])
    (out / "predictions.csv").unlink()
    (out / "masks" / f"{paths[3].stem}.png").write_bytes(b"half a png")
    kept = {p: (out / "masks" / f"{p.stem}.png").stat().st_mtime_ns for p in paths[:2]}

    with pytest.raises(SamfedError, match="--overwrite to replace it or --resume"):
        run_files(_predictor(exported), paths, out, workers=1)
    with pytest.raises(SamfedError, match="other threshold"):
        run_files(_predictor(exported, 0.4), paths, out, workers=1, mode="resume")
    with pytest.raises(SamfedError, match="other images"):
        run_files(_predictor(exported), paths[:3], out, workers=1, mode="resume")

    again = run_files(_predictor(exported), paths, out, workers=1, mode="resume")
    assert (again.resumed, again.processed) == (2, 2)
    assert (out / "predictions.csv").read_text() == rows  # the same table as the uninterrupted run
    assert {p: (out / "masks" / f"{p.stem}.png").stat().st_mtime_ns for p in paths[:2]} == kept
    mask = np.asarray(Image.open(out / "masks" / f"{paths[3].stem}.png"))
    assert mask.shape == np.asarray(Image.open(paths[3])).shape[:2]  # the torn mask was redone
    assert len((out / JOURNAL_NAME).read_text().splitlines()) == 4


def test_same_names_in_two_folders_get_distinct_outputs(exported, few_images, tmp_path, capsys):
    src = sorted(few_images.iterdir())
    for sub, img in (("a", src[0]), ("b", src[1])):
        (tmp_path / sub).mkdir()
        shutil.copy(img, tmp_path / sub / "x.jpg")
    Image.open(src[2]).save(tmp_path / "a" / "x.png")  # same stem, other format, same folder
    out = tmp_path / "out"
    code, _, _ = cli(
        capsys, "predict", str(exported), str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)
    )
    assert code == 0
    assert _csv_ids(out) == ["a/x.jpg", "a/x.png", "b/x"]
    for image_id, img in (("a/x.jpg", src[0]), ("a/x.png", src[2]), ("b/x", src[1])):
        assert Image.open(out / "masks" / f"{image_id}.png").size == Image.open(img).size
    assert output_ids([Path("/d/images/p.jpg"), Path("/d/images/q.jpg")]) == ["p", "q"]
    assert output_ids([Path("/d/p.jpg"), Path("/d/sub/p.jpg")]) == ["p", "sub/p"]


def test_unwritable_output_is_one_line(exported, few_images, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, _, err = cli(
        capsys, "predict", str(exported), str(few_images), "--out", str(tmp_path / "file" / "sub")
    )
    assert_one_line_error(code, err, "Cannot write")
    # a write that fails mid-run (masks/ is a file) is one line too
    out = tmp_path / "out"
    run_files(_predictor(exported), sorted(few_images.iterdir()), out, workers=1)
    (out / JOURNAL_NAME).write_text("")
    shutil.rmtree(out / "masks")
    (out / "masks").write_text("in the way")
    code, _, err = cli(capsys, "predict", str(exported), *map(str, sorted(few_images.iterdir())), "--out",
                       str(out), "--resume", "--backend", "onnxruntime")  # fmt: skip
    assert_one_line_error(code, err, "Cannot write", "masks")
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root writes into read-only folders
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        code, _, err = cli(capsys, "predict", str(exported), str(few_images), "--out", str(ro))
        ro.chmod(0o755)
        assert_one_line_error(code, err, "Cannot write")


def test_exif_orientation_is_applied(exported, few_images, tmp_path, capsys):
    src = Image.open(sorted(few_images.iterdir())[0]).convert("RGB").resize((90, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees (portrait)
    (tmp_path / "in").mkdir()
    src.save(tmp_path / "in" / "rotated.jpg", exif=exif)
    upright = ImageOps.exif_transpose(Image.open(tmp_path / "in" / "rotated.jpg"))
    assert upright.size == (60, 90)
    code, _, _ = cli(capsys, "predict", str(exported), str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    assert code == 0
    assert Image.open(tmp_path / "out" / "masks" / "rotated.png").size == (60, 90)
    row = next(csv.DictReader((tmp_path / "out" / "predictions.csv").read_text().splitlines()))
    assert (row["width"], row["height"]) == ("60", "90")


# --- the edge stays torch-free ---------------------------------------------------------------------

BLOCKED = ["torch", "torchvision", "onnx", "nncf", "scipy", "safetensors", "timm", "flwr", "segment_anything"]


def test_signed_predict_and_resume_without_torch(export_copy, few_images, tmp_path):
    fp = sign_export(export_copy, tmp_path / "k.pem")
    out = tmp_path / "out"
    code = textwrap.dedent(f"""
        import sys
        for name in {BLOCKED!r}:
            sys.modules[name] = None  # any `import torch` now raises ImportError
        from cli import main
        args = ["predict", {str(export_copy)!r}, {str(few_images)!r}, "--out", {str(out)!r},
                "--trusted-key", {fp!r}, "--backend", "openvino"]
        for extra in ([], ["--resume"]):
            try:
                main(args + extra)
            except SystemExit as exc:
                assert not exc.code, exc.code
        leaked = [m for m in sys.modules if m.split(".")[0] in {BLOCKED!r} and sys.modules[m] is not None]
        print("LEAKED", leaked)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "LEAKED []" in res.stdout and "4 kept" in " ".join(res.stdout.split())
    assert len(_csv_ids(out)) == 4


def test_exported_teacher_files_stay_inside_their_folder(tmp_path, exported):
    from edge.teacher_runtime import MANIFEST, OnnxTeacher

    (tmp_path / "evil.onnx").write_bytes((exported / "model_fp32.onnx").read_bytes())
    folder = tmp_path / "teacher"
    folder.mkdir()
    base = {
        "input": {"size": 256, "convention": "stretch-unit", "lowres": 256},
        "prompt": "full-box",
        "teacher_hash": "0" * 64,
    }
    cases = {
        "../evil.onnx": {"encoder": "../evil.onnx", "decoders": {"none": "n.onnx", "box": "b.onnx"}},
        str(tmp_path / "evil.onnx"): {
            "encoder": str(tmp_path / "evil.onnx"),
            "decoders": {"none": "n", "box": "b"},
        },
        "not a relative file name": {"encoder": 5, "decoders": {"none": "n.onnx", "box": "b.onnx"}},
        "must name the decoders": {"encoder": "e.onnx", "decoders": {"none": "n.onnx"}},
        "lacks e.onnx": {"encoder": "e.onnx", "decoders": {"none": "n.onnx", "box": "b.onnx"}},
    }
    for needle, files in cases.items():
        (folder / MANIFEST).write_text(json.dumps(base | files))
        with pytest.raises(SamfedError, match=needle.replace(".", r"\.")):
            OnnxTeacher(folder)
