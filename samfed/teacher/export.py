"""Export the (fine-tuned, LoRA-merged) teacher to ONNX for the torch-free edge runtime.

Writes into `out_dir`:
- ``teacher_encoder.onnx``: image (1, 3, S, S) float -> embeddings (1, 256, E, E) (batch 1: TinyViT's
  PatchMerging reads the batch size with ``len(x)``, which the tracer freezes; the runtime loops);
- ``teacher_decoder_box.onnx``: embeddings (1, 256, E, E) + box (1, 4) -> logits (1, 1, L, L);
- ``teacher_decoder_none.onnx``: embeddings (1, 256, E, E) -> logits (1, 1, L, L) (no prompt);
- ``teacher_onnx.json``: input convention, prompt mode, source teacher hash, parity report.
Both decoder graphs trace `Teacher.decode`, the same code the torch teacher runs. Legacy exporter
(``dynamo=False``), opset 17 (STACK-NOTES: the dynamo exporter fails on SAM's decoder).
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from samfed.teacher.lora import merge_lora
from samfed.teacher.model import Teacher

MANIFEST = "teacher_onnx.json"
ENCODER_FILE = "teacher_encoder.onnx"
DECODER_FILES = {"box": "teacher_decoder_box.onnx", "none": "teacher_decoder_none.onnx"}


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
    return t.eval()  # recompute TinyViT's cached attention biases on the copy (trap 1)


def _onnx_export(
    model: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic
) -> None:
    with warnings.catch_warnings():  # tracer warnings about TinyViT's Python-side shape code
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=dynamic,
            opset_version=17, dynamo=False, do_constant_folding=True,
        )  # fmt: skip


@torch.no_grad()
def export_teacher(
    teacher: Teacher,
    out_dir: str | Path,
    parity_images: Sequence[np.ndarray] | None = None,
    parity_out_size: int = 256,
    openvino: bool = False,
) -> dict:
    """Export `teacher` to ONNX in `out_dir`; returns the manifest (also written as JSON).

    With `parity_images` ((H, W, 3) uint8), the exported teacher is run by ONNX Runtime (and
    OpenVINO when `openvino`) and compared with torch: per-image Dice of the masks (p > 0.5),
    its minimum, and the max absolute probability difference go into ``manifest["parity"]``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged = merged_copy(teacher)
    spec, e = merged.input, merged.input.lowres // 4
    _onnx_export(
        _Encoder(merged), (torch.zeros(1, 3, spec.size, spec.size),), out / ENCODER_FILE, ["image"],
        ["embeddings"], None,
    )  # fmt: skip
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
    manifest = {
        "format": "samfed-teacher-onnx/1",
        "backbone": teacher.config.backbone,
        "input": spec.to_dict(),
        "prompt": teacher.prompt,
        "teacher_hash": teacher.hash,
        "encoder": ENCODER_FILE,
        "decoders": DECODER_FILES,
        "opset": 17,
        "finetune": teacher.config.finetune,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    if parity_images is not None and len(parity_images):
        manifest["parity"] = parity_report(teacher, out, parity_images, parity_out_size, openvino)
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1 when both are empty."""
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def parity_report(
    teacher: Teacher, onnx_dir: Path, images: Sequence[np.ndarray], out_size: int, openvino: bool = False
) -> dict:
    """Dice of masks and probability differences between torch and the exported runtimes.

    Uses the teacher's prompt mode; ``global-box`` (which needs a global model) is checked with the
    full box, through the same box decoder graph."""
    from edge.teacher_runtime import OnnxTeacher

    prompt = "full-box" if teacher.prompt == "global-box" else teacher.prompt
    t0 = time.perf_counter()
    ref = teacher.predict_proba(images, out_size, prompt=prompt)
    report = {
        "images": len(images),
        "prompt": prompt,
        "torch_s_per_image": (time.perf_counter() - t0) / len(images),
    }
    for backend in ("onnxruntime", "openvino") if openvino else ("onnxruntime",):
        rt = OnnxTeacher(onnx_dir, backend=backend)
        t0 = time.perf_counter()
        got = rt.predict_proba(images, out_size, prompt=prompt)
        dices = [mask_dice(r > 0.5, g > 0.5) for r, g in zip(ref, got, strict=True)]
        report[backend] = {
            "dice_mean": float(np.mean(dices)),
            "dice_min": float(np.min(dices)),
            "max_abs_prob_diff": float(np.abs(ref - got).max()),
            "s_per_image": (time.perf_counter() - t0) / len(images),
        }
    return report
