"""The SAM teacher: backbones, LoRA, prompt modes, fine-tuning, cached maps and ONNX export.

Public API (stable; the training code calls these)::

    from samfed.teacher import load_teacher, finetune_teacher, save_teacher, teacher_maps, TeacherMapCache

    teacher = load_teacher("litemedsam")                      # or a folder written by save_teacher
    probs = teacher.predict_proba(images, out_size=256)        # (B,H,W,3) uint8 -> (B,256,256) float32
    result = finetune_teacher(teacher, imgs, masks, val_imgs, val_masks, mode="decoder", prompt="full-box")
    save_teacher(teacher, "runs/teacher")                      # -> hash; load_teacher("runs/teacher")
    maps = teacher_maps(teacher, images, TeacherMapCache("cache/teacher"), out_size=256)

Attributes resolve lazily, so ``import samfed.teacher.cache`` (torch-free) does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Teacher": "samfed.teacher.model",
    "TeacherConfig": "samfed.teacher.model",
    "load_teacher": "samfed.teacher.state",
    "save_teacher": "samfed.teacher.state",
    "build_teacher": "samfed.teacher.state",
    "BACKBONES": "samfed.teacher.backbones",
    "LoraConfig": "samfed.teacher.lora",
    "add_lora": "samfed.teacher.lora",
    "merge_lora": "samfed.teacher.lora",
    "parameter_counts": "samfed.teacher.lora",
    "print_parameter_counts": "samfed.teacher.lora",
    "PROMPT_MODES": "samfed.teacher.prompts",
    "DEFAULT_PROMPT": "samfed.teacher.prompts",
    "finetune_teacher": "samfed.teacher.finetune",
    "FinetuneResult": "samfed.teacher.finetune",
    "TeacherMapCache": "samfed.teacher.cache",
    "teacher_maps": "samfed.teacher.cache",
    "export_teacher": "samfed.teacher.export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'samfed.teacher' has no attribute {name!r}")
