"""Load a teacher by name or from a fine-tuned folder; save a fine-tuned teacher.

A saved teacher is a folder with ``teacher.json`` (config + sha256 hash) and
``teacher.safetensors`` holding only the tensors fine-tuning can change (the mask decoder and the
LoRA factors); the frozen base weights are rebuilt from the backbone. Loading verifies the hash.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from samfed.errors import SamfedError
from samfed.teacher.backbones import BACKBONES, get_backbone
from samfed.teacher.lora import add_lora, has_lora
from samfed.teacher.model import Teacher, TeacherConfig
from samfed.teacher.prompts import check_prompt

CONFIG_FILE = "teacher.json"
TENSORS_FILE = "teacher.safetensors"


def delta_keys(sam: nn.Module) -> list[str]:
    """State-dict keys fine-tuning may change: the mask decoder and any LoRA factors."""
    return [k for k in sam.state_dict() if k.startswith("mask_decoder.") or ".lora_" in k]


def is_teacher_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def build_teacher(config: TeacherConfig) -> Teacher:
    """Base weights of ``config.backbone`` (+ empty LoRA if configured), eval mode."""
    backbone = get_backbone(config.backbone)
    sam = backbone.build(None if config.checkpoint is None else Path(config.checkpoint))
    if config.lora is not None:
        add_lora(sam.image_encoder, config.lora)
    return Teacher(sam, config, backbone.input).eval()


def load_teacher(
    name: str | Path = "litemedsam", checkpoint: str | Path | None = None, prompt: str | None = None
) -> Teacher:
    """A ready teacher (eval mode) by backbone name or from a folder written by `save_teacher`.

    name: ``litemedsam`` | ``sam-vit-b`` | ``sam-vit-l`` | ``sam-vit-h`` | a teacher folder.
    checkpoint: base weights file (required for sam-vit-*; overrides the one recorded in a folder).
    prompt: override the prompt mode (default: the folder's, else `DEFAULT_PROMPT`).
    """
    if is_teacher_dir(name):
        teacher = _load_dir(Path(name), checkpoint)
    elif str(name) in BACKBONES:
        ckpt = None if checkpoint is None else str(Path(checkpoint).expanduser())
        teacher = build_teacher(TeacherConfig(backbone=str(name), checkpoint=ckpt))
    else:
        raise SamfedError(
            f"Teacher {str(name)!r} is neither a backbone name ({', '.join(BACKBONES)}) "
            f"nor a folder containing {CONFIG_FILE}."
        )
    if prompt is not None:
        teacher.prompt = check_prompt(prompt)
    return teacher


def _load_dir(folder: Path, checkpoint: str | Path | None) -> Teacher:
    from safetensors.torch import load_file

    try:
        meta = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        config = TeacherConfig.from_dict(meta["config"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SamfedError(f"{folder / CONFIG_FILE} is not a valid teacher config ({exc}).") from None
    if checkpoint is not None:
        config.checkpoint = str(Path(checkpoint).expanduser())
    tensors = folder / TENSORS_FILE
    if not tensors.is_file():
        raise SamfedError(f"Teacher folder {folder} lacks {TENSORS_FILE}.")
    try:
        state = load_file(str(tensors))
    except Exception as exc:  # noqa: BLE001 - corrupt file
        raise SamfedError(f"Cannot read {tensors}: {str(exc).splitlines()[0]}") from None
    teacher = build_teacher(config)
    expected = set(delta_keys(teacher.sam))
    if set(state) != expected:
        raise SamfedError(f"{tensors} does not match the teacher described in {CONFIG_FILE}.")
    teacher.sam.load_state_dict(state, strict=False)
    teacher.eval()  # after loading: TinyViT caches its attention biases at .eval()
    if meta.get("hash") and meta["hash"] != teacher.hash:
        raise SamfedError(
            f"Teacher in {folder} does not reproduce its recorded hash: its base weights differ from "
            "the ones it was fine-tuned from."
        )
    return teacher


def save_teacher(teacher: Teacher, folder: str | Path) -> str:
    """Write ``teacher.json`` + ``teacher.safetensors`` into `folder`; returns the teacher hash."""
    from safetensors.torch import save_file

    if teacher.config.lora is not None and not has_lora(teacher.sam):
        raise ValueError("save_teacher needs the unmerged teacher (LoRA factors); merge only for export")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = teacher.sam.state_dict()
    save_file(
        {k: sd[k].detach().cpu().contiguous() for k in delta_keys(teacher.sam)}, str(folder / TENSORS_FILE)
    )
    digest = teacher.hash
    meta = {"format": "samfed-teacher/1", "config": teacher.config.to_dict(), "hash": digest}
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return digest
