"""Export the (fine-tuned, LoRA-merged) teacher for the torch-free edge runtime, in several variants.

Writes into `out_dir` (the variants are described in `edge.teacher_runtime`):
- ``teacher_encoder.onnx``: image (1, 3, S, S) float -> embeddings (1, 256, E, E) (batch 1: TinyViT's
  PatchMerging reads the batch size with ``len(x)``, which the tracer freezes; the runtime runs
  images as parallel requests) — variant ``onnx-fp32``;
- ``teacher_encoder_fp32.xml/.bin``: its OpenVINO IR — ``openvino-fp32``, and ``openvino-bf16`` where
  the CPU has BF16;
- ``teacher_encoder_int8.xml/.bin``: NNCF INT8 of that IR calibrated on `calib_images` (the server's
  labeled images) — ``openvino-int8``;
- ``teacher_decoder_box.onnx``: embeddings (1, 256, E, E) + box (1, 4) -> logits (1, 1, L, L);
- ``teacher_decoder_none.onnx``: embeddings (1, 256, E, E) -> logits (1, 1, L, L) (no prompt);
- ``teacher_onnx.json``: input convention, prompt mode, source teacher hash, per variant its parity
  with the torch teacher and its latency, the recommended variant, and the sha256 of every file.
Both decoder graphs trace `Teacher.decode`, the same code the torch teacher runs. Legacy exporter
(``dynamo=False``), opset 17: the dynamo exporter fails on SAM's decoder.

Recommendation: the fastest variant (seconds per image, encoder + decoder, measured interleaved with
torch) whose masks agree with torch's at mean Dice >= 0.99 and minimum >= 0.95 and, when ground truth
is given, whose Dice against it is at most 0.5 point below torch's; none when no variant passes
(callers then keep the torch teacher).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from edge.manifest import hash_files
from edge.teacher_runtime import MANIFEST, VARIANTS, OnnxTeacher, cpu_supports_bf16, read_manifest
from samfed.errors import SamfedError, require_folder_or_new
from samfed.teacher.lora import merge_lora
from samfed.teacher.model import Teacher

FORMAT = "samfed-teacher-onnx/2"
ENCODER_FILE = VARIANTS["onnx-fp32"].encoder
IR_FP32, IR_INT8 = VARIANTS["openvino-fp32"].encoder, VARIANTS["openvino-int8"].encoder
DECODER_FILES = {"box": "teacher_decoder_box.onnx", "none": "teacher_decoder_none.onnx"}
EXPORT_WRITES = (
    MANIFEST,
    ENCODER_FILE,
    *DECODER_FILES.values(),
    *(n for xml in (IR_FP32, IR_INT8) for n in (xml, xml.removesuffix(".xml") + ".bin")),
)
# NNCF settings of the INT8 encoder (TinyViT: convolutions, then attention blocks), chosen by mask
# agreement with the FP32 encoder on Kvasir val: the transformer model type, fast bias correction
INT8_FLOAT_NODES: tuple[str, ...] = ()
PARITY_DICE_MEAN = 0.99  # masks of a usable variant agree with torch's at least this much on average
PARITY_DICE_MIN = 0.95  # ... and on every image
MAX_GT_DICE_LOSS = 0.005  # Dice against ground truth may drop by at most 0.5 point
MIN_REDUCED_PARITY_IMAGES = 16  # a bf16 or INT8 variant is recommended only after parity on this many


class _Decoder(nn.Module):
    def __init__(self, teacher: Teacher, with_box: bool):
        super().__init__()
        self.teacher, self.with_box = teacher, with_box

    def forward(self, embeddings: torch.Tensor, box: torch.Tensor | None = None) -> torch.Tensor:
        return self.teacher.decode(embeddings, box if self.with_box else None)


class _Encoder(nn.Module):
    def __init__(self, teacher: Teacher):
        super().__init__()
        self.teacher = teacher

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.teacher.encode(image)


def merged_copy(teacher: Teacher) -> Teacher:
    """A deep copy with LoRA folded into plain weights, eval mode (the caller's teacher is untouched)."""
    t = copy.deepcopy(teacher)
    merge_lora(t.sam)
    # TinyViT caches its attention biases when switched to eval mode: switching after the merge
    # makes the copy's cache match its (merged) weights
    return t.eval()


def _onnx_export(
    model: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic
) -> None:
    with warnings.catch_warnings():  # tracer warnings about TinyViT's Python-side shape code
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=dynamic,
            opset_version=17, dynamo=False, do_constant_folding=True,
        )  # fmt: skip


def check_out_dir(out: Path) -> None:
    """`out` must be new, empty, or hold only files a teacher export writes (a previous export);
    SamfedError otherwise (a file, or a folder of something else: nothing there is replaced)."""
    require_folder_or_new(out)
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_WRITES)
        if foreign:
            raise SamfedError(
                f"Output folder {out} holds files that are not a teacher export ({foreign[0]}, ...); "
                "choose a new or empty --out."
            )


def _write_graphs(merged: Teacher, out: Path) -> None:
    """The ONNX encoder and both decoder graphs of `merged` (eval, LoRA folded) into `out`."""
    spec, e = merged.input, merged.input.lowres // 4
    image = torch.zeros(1, 3, spec.size, spec.size)
    _onnx_export(_Encoder(merged), (image,), out / ENCODER_FILE, ["image"], ["embeddings"], None)
    emb = torch.zeros(1, 256, e, e)
    box = torch.tensor([[0.0, 0.0, spec.size - 1.0, spec.size - 1.0]])
    _onnx_export(
        _Decoder(merged, True),
        (emb, box),
        out / DECODER_FILES["box"],
        ["embeddings", "box"],
        ["logits"],
        None,
    )
    _onnx_export(
        _Decoder(merged, False), (emb,), out / DECODER_FILES["none"], ["embeddings"], ["logits"], None
    )


def _write_openvino(
    teacher: Teacher, out: Path, calib_images: Sequence[np.ndarray] | None, int8: bool, log
) -> dict[str, dict]:
    """IR FP32 (+ INT8 calibrated on `calib_images`) of the ONNX encoder; their variant entries."""
    from export.openvino_export import convert_ir_fp32, quantize_ir_int8
    from samfed.teacher.transforms import to_input_batch

    convert_ir_fp32(out / ENCODER_FILE, out / IR_FP32)
    variants = {"openvino-fp32": {"encoder": IR_FP32}}
    if cpu_supports_bf16():
        variants["openvino-bf16"] = {"encoder": IR_FP32}
    else:
        log("this CPU has no BF16: no openvino-bf16 variant")
    if int8 and calib_images is not None and len(calib_images):
        t0 = time.perf_counter()
        calib = to_input_batch(calib_images, teacher.input)
        quantize_ir_int8(
            out / IR_FP32, out / IR_INT8, calib, transformer=True, fast_bias_correction=True,
            ignored_patterns=INT8_FLOAT_NODES,
        )  # fmt: skip
        variants["openvino-int8"] = {
            "encoder": IR_INT8,
            "calibration": {"images": len(calib), "seconds": round(time.perf_counter() - t0, 1)},
        }
        log(f"OpenVINO INT8 encoder (NNCF) calibrated on {len(calib)} images")
    elif int8:
        log("no calibration images: no openvino-int8 variant")
    return variants


def _write_manifest(out: Path, manifest: dict) -> dict:
    """Hash every export file in `out` into manifest["files"] and write the manifest."""
    names = [n for n in EXPORT_WRITES if n != MANIFEST and (out / n).is_file()]
    manifest = {**manifest, "files": hash_files(out, names)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


@torch.no_grad()
def export_teacher(
    teacher: Teacher,
    out_dir: str | Path,
    parity_images: Sequence[np.ndarray] | None = None,
    parity_out_size: int = 256,
    openvino: bool = True,
    calib_images: Sequence[np.ndarray] | None = None,
    int8: bool = True,
    parity_masks: Sequence[np.ndarray] | None = None,
    threads: int | None = None,
    latency_iters: int = 3,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Export `teacher` into `out_dir`; returns the manifest (also written as JSON).

    parity_images: (H, W, 3) uint8 images on which every variant is run and compared with torch
    (`parity_report`) and timed; without them nothing is recommended. parity_masks: their (H, W)
    bool ground truth, for Dice against it. openvino: also the OpenVINO variants. calib_images:
    (H, W, 3) uint8 images (the server's labeled set) calibrating the INT8 variant (none without
    them). threads: CPU threads of every runtime (default: all usable CPUs)."""
    log = log or (lambda _msg: None)
    out = Path(out_dir)
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in EXPORT_WRITES:  # a previous export's files (a stale INT8 encoder, ...) go first
        (out / name).unlink(missing_ok=True)
    t_start = time.perf_counter()
    _write_graphs(merged_copy(teacher), out)
    log("ONNX encoder and decoders written")
    variants: dict[str, dict] = {"onnx-fp32": {"encoder": ENCODER_FILE}}
    if openvino:
        variants |= _write_openvino(teacher, out, calib_images, int8, log)
    manifest = _write_manifest(
        out,
        {
            "format": FORMAT,
            "backbone": teacher.config.backbone,
            "input": teacher.input.to_dict(),
            "prompt": teacher.prompt,
            "teacher_hash": teacher.hash,
            "encoder": ENCODER_FILE,
            "decoders": DECODER_FILES,
            "variants": {k: {**asdict(VARIANTS[k]), **v} for k, v in variants.items()},
            "recommended": None,
            "opset": 17,
            "finetune": teacher.config.finetune,
        },
    )
    if parity_images is not None and len(parity_images):
        log(f"parity and latency of {len(variants)} variants against torch on {len(parity_images)} images")
        report = parity_report(
            teacher, out, parity_images, parity_out_size, list(variants), parity_masks, threads, latency_iters
        )
        for key, entry in report.pop("variants").items():
            manifest["variants"][key].update(entry)
        best, reason, notes = recommend_variant(
            manifest["variants"], report.get("dice_vs_gt"), report["images"]
        )
        manifest |= {
            "parity": report,
            "recommended": best,
            "recommendation_reason": reason,
            "warnings": notes,
        }
    manifest["export_seconds"] = round(time.perf_counter() - t_start, 1)
    return _write_manifest(out, manifest)


def _latency_runners(teacher: Teacher, runtimes: dict[str, OnnxTeacher], boxes: np.ndarray | None):
    """{"torch-fp32" | variant: (B, 3, S, S) float32 -> logits} with the parity prompt's boxes."""

    def runner(model) -> Callable[[np.ndarray], object]:
        return lambda x: model._run(x, None if boxes is None else boxes[: len(x)])

    return {"torch-fp32": runner(teacher), **{k: runner(rt) for k, rt in runtimes.items()}}


def _agreement(ref: np.ndarray, got: np.ndarray) -> dict:
    """Mask Dice (p > 0.5) mean / min and the max |probability difference| of (N, S, S) maps."""
    from samfed.metrics import dice_batch

    d = dice_batch(ref > 0.5, got > 0.5)
    return {
        "dice_mean": round(float(d.mean()), 5),
        "dice_min": round(float(d.min()), 5),
        "max_abs_prob_diff": float(np.abs(ref - got).max()),
    }


def _dice_vs_gt(probs: np.ndarray, masks: list[np.ndarray]) -> float:
    """Mean Dice of (N, S, S) maps (p > 0.5) against masks resized to S (nearest)."""
    from samfed.metrics import dice_batch
    from samfed.preprocess import resize_mask

    gt = np.stack([resize_mask(np.asarray(m, bool), probs.shape[-1]) for m in masks])
    return round(float(dice_batch(probs > 0.5, gt).mean()), 5)


def parity_report(
    teacher: Teacher,
    export_dir: Path,
    images: Sequence[np.ndarray],
    out_size: int,
    variants: Sequence[str] = ("onnx-fp32",),
    masks: Sequence[np.ndarray] | None = None,
    threads: int | None = None,
    latency_iters: int = 3,
) -> dict:
    """Run torch and every variant of `export_dir` on `images`: per variant, the agreement of its
    maps with torch's (`_agreement`), its Dice against `masks` when given, and its seconds per image
    (encoder + decoder on a batch of up to 4 images, timed interleaved with torch,
    `export.latency.measure_interleaved`). Uses the teacher's prompt mode; ``global-box`` (which
    needs a global model) is checked with the full box, through the same box decoder graph."""
    from export.latency import cpu_info, measure_interleaved
    from samfed.teacher.prompts import resolve_boxes
    from samfed.teacher.transforms import to_input_batch

    prompt = "full-box" if teacher.prompt == "global-box" else teacher.prompt
    n_threads = threads or torch.get_num_threads()
    runtimes = {k: OnnxTeacher(export_dir, variant=k, threads=threads) for k in variants}
    ref = teacher.predict_proba(images, out_size, prompt=prompt)
    report: dict = {"images": len(images), "prompt": prompt, "threads": n_threads, "cpu": cpu_info()}
    if masks is not None:
        report["dice_vs_gt"] = _dice_vs_gt(ref, list(masks))
    report["variants"] = {}
    for key, rt in runtimes.items():
        got = rt.predict_proba(images, out_size, prompt=prompt)
        entry = _agreement(ref, got)
        if not np.isfinite(got).all():
            entry["dice_mean"] = entry["dice_min"] = 0.0  # never recommend a variant giving NaN/inf
        if masks is not None:
            entry["dice_vs_gt"] = _dice_vs_gt(got, list(masks))
        report["variants"][key] = {"parity": entry}
    batch = images[: min(4, len(images))]
    x = to_input_batch(batch, teacher.input)
    boxes = resolve_boxes(prompt, teacher.input, [np.asarray(im).shape[:2] for im in batch])
    runners = _latency_runners(teacher, runtimes, boxes)
    lat = measure_interleaved(runners, {len(x): x}, iters=latency_iters, warmup=1)
    timing = {
        k: {"latency": {str(len(x)): r[len(x)]}, "s_per_image": _s_per_image(r[len(x)])}
        for k, r in lat.items()
    }
    report["torch"] = timing.pop("torch-fp32")
    for key, t in timing.items():
        report["variants"][key] |= t
    return report


def _s_per_image(summary: dict) -> float:
    """Seconds per image from an `export.latency.summarize_times` record (median call / batch)."""
    return round(summary["p50_ms"] / 1e3 / summary["batch"], 4)


def parity_problem(parity: dict, torch_dice_vs_gt: float | None = None) -> str | None:
    """None when a variant's parity with torch is good enough to use it, else why not."""
    if parity["dice_mean"] < PARITY_DICE_MEAN or parity["dice_min"] < PARITY_DICE_MIN:
        return (
            f"its masks agree with torch's at Dice mean {parity['dice_mean']:.4f} / min "
            f"{parity['dice_min']:.4f} (needs >= {PARITY_DICE_MEAN} / {PARITY_DICE_MIN})"
        )
    gt = parity.get("dice_vs_gt")
    if gt is not None and torch_dice_vs_gt is not None and torch_dice_vs_gt - gt > MAX_GT_DICE_LOSS:
        return (
            f"its Dice against ground truth is {100 * (torch_dice_vs_gt - gt):.2f} points below torch's "
            f"(at most {100 * MAX_GT_DICE_LOSS:.1f} allowed)"
        )
    return None


def recommend_variant(
    variants: dict[str, dict], torch_dice_vs_gt: float | None = None, parity_images: int | None = None
) -> tuple[str | None, str, list[str]]:
    """(fastest variant whose parity holds or None, one-line reason, warnings about rejected ones).

    variants: key -> {"parity": {...}, "s_per_image": float, ...} (entries without both are skipped).
    parity_images: how many images the parity was measured on; with fewer than
    MIN_REDUCED_PARITY_IMAGES only FP32 variants qualify (a reduced-precision variant's rare bad
    images do not show on a few)."""
    measured = {k: v for k, v in variants.items() if "parity" in v and "s_per_image" in v}
    if not measured:
        return None, "no parity was measured (export without parity images)", []
    notes, passing = [], {}
    few = parity_images is not None and parity_images < MIN_REDUCED_PARITY_IMAGES
    for key, v in measured.items():
        why = parity_problem(v["parity"], torch_dice_vs_gt)
        if why is None and few and not key.endswith("-fp32"):
            why = (
                f"parity was measured on {parity_images} images "
                f"(reduced precision needs {MIN_REDUCED_PARITY_IMAGES})"
            )
        if why is None:
            passing[key] = v
        else:
            notes.append(f"{key} is not used: {why}.")
    if not passing:
        return None, "no variant matches the torch teacher: keep the torch teacher", notes
    best = min(passing, key=lambda k: passing[k]["s_per_image"])
    reason = (
        f"fastest variant ({passing[best]['s_per_image']:.3f} s per image) whose masks agree with "
        f"the torch teacher's (Dice mean >= {PARITY_DICE_MEAN}, min >= {PARITY_DICE_MIN})"
    )
    return best, reason, notes


def recommended_teacher(folder: str | Path, threads: int | None = None) -> OnnxTeacher | None:
    """The recommended variant of an export folder, or None when it recommends none (parity failed
    or was never measured) or is not an export."""
    folder = Path(folder)
    try:
        manifest = read_manifest(folder)
    except SamfedError:
        return None
    if manifest.get("recommended") not in VARIANTS:
        return None
    return OnnxTeacher(folder, variant="auto", threads=threads)


class LabeledImages(NamedTuple):
    """Images for an export: INT8 calibration, and parity (with its ground truth when known)."""

    calib: list  # (H, W, 3) uint8
    parity: list  # (H, W, 3) uint8
    masks: list | None  # (H, W) bool of `parity`


def labeled_images(
    dataset, labeled_ids: Sequence[str], spec, seed: int = 0, n_calib: int = 32, holdout_fraction: float = 0.2
) -> LabeledImages:
    """The server's labeled set split as teacher fine-tuning splits it (`samfed.teacher.data.holdout`):
    up to `n_calib` of the fine-tuning images, at most half of them, calibrate INT8; every other
    labeled image (the early-stopping images and the fine-tuning images left over, with their
    masks) checks parity, so a variant is judged on as many images as the server has but never on
    its calibration images; with a single labeled image, it serves both."""
    from samfed.teacher.data import holdout, load_pairs

    train_ids, hold_ids = holdout(labeled_ids, holdout_fraction, seed)
    n_calib = min(n_calib, max(1, len(train_ids) // 2))
    calib, _ = load_pairs(dataset, train_ids[:n_calib] or hold_ids[:n_calib], spec)
    parity, masks = load_pairs(dataset, [*hold_ids, *train_ids[n_calib:]] or train_ids[:n_calib], spec)
    return LabeledImages(calib, parity, masks)


def runtime_teacher(
    teacher: Teacher,
    export_root: str | Path,
    images: Callable[[], LabeledImages],
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
):
    """The teacher to compute maps with: the recommended exported variant of `teacher` when one
    matches torch, else `teacher` itself (the reference and the fallback). images: gives the
    export's `labeled_images` (called only when the export is made).

    The export is made once per teacher hash into ``export_root/<hash[:16]>`` (written to a
    temporary folder first, so an interrupted export is never reused) and reused afterwards."""
    log = log or (lambda _msg: None)
    folder = export_folder(export_root, teacher.hash)
    if not _is_export_of(folder, teacher.hash):
        tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"exporting the teacher (ONNX, OpenVINO FP32/bf16/INT8) into {folder}")
        sets = images()
        export_teacher(
            teacher, tmp, parity_images=sets.parity, calib_images=sets.calib, parity_masks=sets.masks,
            threads=threads, log=log,
        )  # fmt: skip
        if _is_export_of(folder, teacher.hash):  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
    rt = recommended_teacher(folder, threads)
    if rt is None:
        log("no exported teacher variant matches the torch teacher: teacher maps come from torch")
        return teacher
    log(f"teacher maps from the exported teacher's {rt.variant} variant")
    return rt


def export_folder(export_root: str | Path, teacher_hash: str) -> Path:
    """Where `runtime_teacher` keeps the export of the teacher with this hash."""
    return Path(export_root) / teacher_hash[:16]


def has_export(export_root: str | Path, teacher_hash: str) -> bool:
    """Whether `export_root` holds a finished export of the teacher with this hash."""
    return _is_export_of(export_folder(export_root, teacher_hash), teacher_hash)


def _is_export_of(folder: Path, teacher_hash: str) -> bool:
    try:
        return read_manifest(folder).get("teacher_hash") == teacher_hash
    except SamfedError:
        return False
