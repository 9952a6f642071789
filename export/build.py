"""`samfed export` end to end: checkpoint -> ONNX/OpenVINO FP32/INT8 + parity + latency + manifest.

Steps: load the student (export.checkpoint), pick calibration and held-out images
(export.images), export FP32 ONNX, quantise per backend with its own tool, measure every artefact
against torch on the held-out images (export.parity) and in one interleaved latency run
(export.latency), choose the recommended artefact (export.recommend), hash everything into
manifest.json (export.manifest_writer).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.manifest import FORMAT, MANIFEST_NAME
from edge.session import open_session
from edge.signature import SIGNATURE_NAME
from export.checkpoint import WEIGHTS, load_student_checkpoint, read_checkpoint_info
from export.images import ImageSet, export_images
from export.latency import cpu_info, measure_interleaved, random_inputs
from export.manifest_writer import write_manifest
from export.parity import dice_vs_gt, mask_agreement, nonfinite_images, run_batched
from export.recommend import recommend
from export.training import training_block
from samfed.errors import SamfedError, require_folder_or_new
from samfed.fileio import sha256_file
from samfed.train.run_dir import manifest_format


@dataclass(frozen=True)
class ArtefactSpec:
    key: str
    backend: str
    precision: str
    path: str  # the file a session opens
    files: tuple[str, ...]


SPECS = {
    s.key: s
    for s in (
        ArtefactSpec("onnx-fp32", "onnxruntime", "fp32", "model_fp32.onnx", ("model_fp32.onnx",)),
        ArtefactSpec("onnx-int8", "onnxruntime", "int8", "model_int8.onnx", ("model_int8.onnx",)),
        ArtefactSpec(
            "openvino-fp32",
            "openvino",
            "fp32",
            "openvino_fp32.xml",
            ("openvino_fp32.xml", "openvino_fp32.bin"),
        ),
        ArtefactSpec(
            "openvino-int8",
            "openvino",
            "int8",
            "openvino_int8.xml",
            ("openvino_int8.xml", "openvino_int8.bin"),
        ),
    )
}
BACKEND_CHOICES = {
    "onnxruntime": ("onnxruntime",),
    "openvino": ("openvino",),
    "all": ("onnxruntime", "openvino"),
    "onnx": ("onnxruntime",),  # the older name of onnxruntime
}


def default_out_dir(source: str | Path) -> Path:
    """`<run>/export` for a run directory, else `<checkpoint dir>/export`."""
    info = read_checkpoint_info(source)
    return (info.run_dir or info.dir) / "export"


EXPORT_WRITES = (MANIFEST_NAME, SIGNATURE_NAME, *(n for s in SPECS.values() for n in s.files))


def _check_out(out: Path) -> None:
    """`out` must be new, empty, a previous export, or what an interrupted export left (only files
    an export writes); a file or a folder of another artefact (a run, ...) is refused."""
    require_folder_or_new(out)
    if not out.is_dir() or not any(out.iterdir()):
        return
    kind = manifest_format(out)
    if kind is None and all(p.name in EXPORT_WRITES for p in out.iterdir()):
        return
    if kind is None:
        raise SamfedError(
            f"Output folder {out} is not empty and holds no previous export; choose another --out."
        )
    if kind != FORMAT:
        raise SamfedError(
            f"Output folder {out} holds a {kind} artefact (its manifest.json), not an export; "
            "choose another --out."
        )


def _prepare_out(out: Path) -> None:
    """Create `out` after `_check_out`; the files of a previous export there are removed."""
    _check_out(out)
    for f in EXPORT_WRITES:
        (out / f).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _require_finite(logits: np.ndarray, what: str) -> None:
    """SamfedError when (N, 1, S, S) logits of the held-out images hold NaN or inf."""
    bad = nonfinite_images(logits)
    if bad:
        raise SamfedError(
            f"{what} gives non-finite outputs (NaN or inf) on {bad} of {len(logits)} held-out images; "
            "such a model cannot be exported: retrain it."
        )


def _build_files(
    model, size: int, out: Path, tmp: Path, keys: list[str], calib: ImageSet, nncf_subset: int, log
):
    from export.onnx_export import export_onnx

    onnx_fp32 = export_onnx(model, (out if "onnx-fp32" in keys else tmp) / "model_fp32.onnx", size)
    log(f"ONNX FP32 written ({onnx_fp32.stat().st_size / 1e6:.1f} MB)")
    if "onnx-int8" in keys:
        from export.ort_quant import quantize_onnx_int8

        quantize_onnx_int8(onnx_fp32, out / SPECS["onnx-int8"].path, calib.x)
        log(
            "ONNX Runtime INT8 (static QDQ, per-channel, QUInt8 activations) "
            f"calibrated on {len(calib.ids)} images"
        )
    if "openvino-fp32" in keys or "openvino-int8" in keys:
        from export.openvino_export import convert_ir_fp32, quantize_ir_int8

        ir_dir = out if "openvino-fp32" in keys else tmp
        fp32_xml = convert_ir_fp32(onnx_fp32, ir_dir / SPECS["openvino-fp32"].path)
        log("OpenVINO IR FP32 written")
        if "openvino-int8" in keys:
            quantize_ir_int8(fp32_xml, out / SPECS["openvino-int8"].path, calib.x, subset_size=nncf_subset)
            log(f"OpenVINO IR INT8 (NNCF) calibrated on {min(nncf_subset, len(calib.ids))} images")


def export_student(
    source: str | Path,
    out_dir: str | Path | None = None,
    *,
    int8: bool = True,
    backend: str = "all",
    calib_folder: str | Path | None = None,
    n_calib: int = 64,
    n_heldout: int = 32,
    threads: int = 2,
    latency_iters: int = 30,
    latency_batches: tuple[int, ...] = (1,),
    nncf_subset: int = 300,
    log: Callable[[str], None] = print,
) -> dict:
    """Export checkpoint `source`; returns the manifest dict (also written to out_dir/manifest.json)."""
    import torch

    if backend not in BACKEND_CHOICES:
        raise SamfedError(f"Unknown backend {backend!r}; expected onnxruntime, openvino or all.")
    t_start = time.perf_counter()
    torch.set_num_threads(threads)
    model, meta = load_student_checkpoint(source)
    prep, threshold = meta["prep"], meta["threshold"]
    run_dir = read_checkpoint_info(source).run_dir
    out = Path(out_dir) if out_dir else default_out_dir(source)
    _check_out(out)
    calib, held = export_images(
        meta, run_dir, prep, Path(calib_folder) if calib_folder else None, n_calib, n_heldout
    )
    log(
        f"{meta['arch']} ({meta['norm']} norm) from {meta['dir']}; "
        f"calibration {len(calib.ids)}, held-out {len(held.ids)} images"
    )
    keys = [
        k
        for k, s in SPECS.items()
        if s.backend in BACKEND_CHOICES[backend] and (int8 or s.precision == "fp32")
    ]
    with torch.inference_mode():
        ref = run_batched(lambda b: model(torch.from_numpy(b)).numpy(), held.x)
    _require_finite(ref, f"The model {meta['dir']}")
    _prepare_out(out)
    with tempfile.TemporaryDirectory() as tmp:
        _build_files(model, prep.size, out, Path(tmp), keys, calib, nncf_subset, log)

    sessions = {k: open_session(out / SPECS[k].path, SPECS[k].backend, threads) for k in keys}
    logits = {k: run_batched(s.run, held.x) for k, s in sessions.items()}
    for k, x in logits.items():
        _require_finite(x, f"The exported {k} artefact")
    artefacts: dict[str, dict] = {}
    for k in keys:
        spec = SPECS[k]
        parity = mask_agreement(ref, logits[k], threshold)
        fp32_twin = f"{k.rsplit('-', 1)[0]}-fp32"
        if spec.precision == "int8" and fp32_twin in logits:
            parity["dice_vs_fp32"] = mask_agreement(logits[fp32_twin], logits[k], threshold)["dice_mean"]
        if held.masks is not None:
            parity["dice_vs_gt"] = round(dice_vs_gt(logits[k], held.masks, threshold), 5)
        artefacts[k] = {
            "backend": spec.backend,
            "precision": spec.precision,
            "path": spec.path,
            "files": list(spec.files),
            "parity": parity,
        }

    def torch_run(x: np.ndarray) -> None:
        with torch.inference_mode():
            model(torch.from_numpy(x))

    log(f"measuring latency ({latency_iters} interleaved iterations, {threads} threads)")
    runners = {"torch-fp32": torch_run, **{k: s.run for k, s in sessions.items()}}
    lat = measure_interleaved(runners, random_inputs(list(latency_batches), prep.size), iters=latency_iters)
    for k in keys:
        artefacts[k]["latency"] = {str(b): v for b, v in lat[k].items()}
    best, reason, warnings = recommend(artefacts)
    torch_ref = {"latency": {str(b): v for b, v in lat["torch-fp32"].items()}}
    if held.masks is not None:
        torch_ref["dice_vs_gt"] = round(dice_vs_gt(ref, held.masks, threshold), 5)
    ckpt = Path(meta["dir"])
    write_manifest(
        out,
        arch=meta["arch"],
        norm=meta["norm"],
        prep=prep,
        threshold=threshold,
        artefacts=artefacts,
        recommended=best,
        recommendation_reason=reason,
        warnings=warnings,
        source_run=meta.get("source_run") or (str(run_dir.resolve()) if run_dir else None),
        source_checkpoint=str(ckpt.resolve()),
        source_checkpoint_sha256=sha256_file(ckpt / WEIGHTS),
        training=training_block(meta, run_dir),
        torch_reference=torch_ref,
        calibration=calib.describe(),
        heldout=held.describe(),
        threads=threads,
        cpu=cpu_info(),
        export_seconds=round(time.perf_counter() - t_start, 1),
    )
    return json.loads((out / MANIFEST_NAME).read_text()) | {"_out_dir": str(out)}
