"""The run's teacher: loaded, fine-tuned on D_p and saved once; its probability maps computed once
per image (cached), with the global-box prompt's masks from the initial global model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from samfed.config import RunConfig
from samfed.method.arrays import SegArrays, predict_proba
from samfed.method.device import resolve_device
from samfed.train.run_dir import RunDir, cache_folder


def teacher_images(dataset, ids: list[str], teacher) -> list[np.ndarray]:
    """Images as the teacher sees them: decoded at its input size for the stretch convention."""
    if teacher.input.convention == "stretch-unit":
        from samfed.data.dataset import load_arrays

        images, _ = load_arrays(dataset, ids, teacher.input.size, with_masks=False)
        return list(images)
    from samfed.data.io import read_image

    return [read_image(s.image) for s in dataset.select(ids)]


def prepare_teacher(cfg: RunConfig, run: RunDir, dataset, split, say) -> tuple[object, dict]:
    """Load, fine-tune on D_p (cfg.teacher_mode) and save the teacher; reuse run/teacher on resume."""
    from samfed.teacher import finetune_teacher, load_teacher, save_teacher
    from samfed.teacher.data import holdout, load_pairs
    from samfed.teacher.state import is_teacher_dir

    device = resolve_device(cfg.device)
    if is_teacher_dir(run.teacher):
        teacher = load_teacher(run.teacher, cfg.teacher_checkpoint).to(device)
        return teacher, {
            "name": teacher.name,
            "mode": "resumed",
            "prompt": teacher.prompt,
            "hash": teacher.hash,
            **teacher.config.finetune,
        }
    given_dir = is_teacher_dir(cfg.teacher)
    teacher = load_teacher(cfg.teacher, cfg.teacher_checkpoint, None if given_dir else cfg.teacher_prompt)
    teacher.to(device)
    info = {
        "name": teacher.name,
        "mode": "given" if given_dir else cfg.teacher_mode,
        "prompt": teacher.prompt,
    }
    if not given_dir and cfg.teacher_mode != "none":
        train_ids, val_ids = holdout(split.server_labeled, 0.2, cfg.seed)
        say(
            f"fine-tuning the teacher ({cfg.teacher_mode}) on {len(train_ids)} + {len(val_ids)} server images"
        )
        images, masks = load_pairs(dataset, train_ids, teacher.input)
        v_images, v_masks = load_pairs(dataset, val_ids, teacher.input)
        result = finetune_teacher(
            teacher,
            images,
            masks,
            v_images,
            v_masks,
            mode=cfg.teacher_mode,
            prompt=cfg.teacher_prompt,
            epochs=cfg.teacher_epochs,
            seed=cfg.seed,
            embedding_cache=cache_root(cfg) / "embeddings",
            progress=False,
            decoder_warmup_epochs=max(1, cfg.teacher_epochs // 2) if cfg.teacher_mode == "lora" else 0,
        )
        info.update(
            best_val_dice_holdout=result.best_val_dice,
            best_epoch=result.best_epoch,
            finetune_seconds=result.seconds,
        )
    info["hash"] = save_teacher(teacher, run.teacher)
    return teacher, info


def cache_root(cfg: RunConfig) -> Path:
    """The shared cache folder of this run's speed-up caches (cfg.cache, else the older
    cfg.teacher_cache, else $SAMFED_CACHE or ~/.cache/samfed)."""
    return cache_folder(cfg.cache or cfg.teacher_cache)


def compute_maps(
    teacher,
    dataset,
    ids: list[str],
    cfg: RunConfig,
    prompt_masks: np.ndarray | None = None,
) -> np.ndarray:
    """Teacher probabilities (N, S, S) float32 for `ids`, cached on disk (computed once per image).

    The cache is `cache_root(cfg)`, keyed by the teacher's hash and the image content.
    prompt_masks: (N, S, S) bool masks of the initial global model, for the ``global-box`` prompt.
    """
    from samfed.teacher import TeacherMapCache, teacher_maps

    if not ids:
        return np.zeros((0, cfg.image_size, cfg.image_size), np.float32)
    root = cache_root(cfg)
    if hasattr(teacher, "encoder_hash") and hasattr(teacher, "decode"):
        from samfed.train.teacher_maps import EmbeddingCachedTeacher

        teacher = EmbeddingCachedTeacher(teacher, root / "embeddings")
    masks = None if teacher.prompt != "global-box" else list(prompt_masks)
    images = teacher_images(dataset, ids, teacher)
    return teacher_maps(
        teacher, images, TeacherMapCache(root / "teacher_maps"), cfg.image_size, prompt_masks=masks
    )


def prompt_masks(prompt: str | None, glob: nn.Module, data: SegArrays, prep) -> np.ndarray | None:
    """(N, S, S) bool masks of the initial global model `glob` on `data`: the ``global-box``
    prompt's boxes come from them; None for every other prompt."""
    return predict_proba(glob, data, prep) > 0.5 if prompt == "global-box" else None


def maps_teacher(cfg: RunConfig, teacher, dataset, split, say):
    """The teacher that computes the run's maps. cfg.teacher_maps_runtime ``torch``, a GPU device
    or an injected teacher: `teacher` itself; ``exported``: its recommended exported variant (ONNX
    Runtime / OpenVINO FP32, bf16, INT8; exported once per teacher hash into
    `cache_root(cfg)`/teacher_exports, INT8 calibrated on D_p); ``auto``: that variant when the
    export already exists. `teacher` stays the fallback when no variant matches it."""
    from samfed.teacher.model import Teacher

    on_cpu = resolve_device(cfg.device).type == "cpu"
    if cfg.teacher_maps_runtime == "torch" or not on_cpu or not isinstance(teacher, Teacher):
        return teacher
    import torch

    from samfed.teacher.export import has_export, labeled_images, runtime_teacher

    root = cache_root(cfg) / "teacher_exports"
    if cfg.teacher_maps_runtime == "auto" and not has_export(root, teacher.hash):
        return teacher

    def images():
        return labeled_images(dataset, split.server_labeled, teacher.input, seed=cfg.seed)

    return runtime_teacher(teacher, root, images, threads=torch.get_num_threads(), log=say)
