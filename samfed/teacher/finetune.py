"""Fine-tune the teacher on the server's labeled set: mask decoder only, or LoRA + mask decoder.

Loss: BCE + soft Dice on the decoder's low-res logits. Early stopping on validation Dice (the
zero-shot model is epoch 0, so fine-tuning never returns a teacher worse on validation than it
started). ``mode="decoder"`` encodes every image ONCE with the frozen encoder and trains on the
cached embeddings (cheap by design; flips cannot be applied there). ``mode="lora"`` runs the encoder
each step (flip augmentation on the images); ``decoder_warmup_epochs`` first runs a cheap
decoder-only stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from samfed.method.agreement import mask_dice
from samfed.method.losses import seg_loss
from samfed.teacher.embeddings import embed_images
from samfed.teacher.lora import LoraConfig, add_lora, has_lora, lora_parameters, parameter_counts
from samfed.teacher.model import Teacher
from samfed.teacher.prompts import check_prompt
from samfed.teacher.transforms import full_box, mask_box_to_input, mask_to_lowres, to_input_batch

MODES = ("decoder", "lora")


@dataclass
class FinetuneResult:
    """What fine-tuning did; `history` has one dict per epoch (epoch 0 = before training)."""

    mode: str
    prompt: str
    best_epoch: int
    best_val_dice: float
    epochs_run: int
    seconds: float
    trainable_params: int
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def hard_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, 1, L, L) -> (B,) Dice of (logits > 0) vs target > 0.5; 1 when both are empty."""
    return mask_dice(logits > 0, target > 0.5)


def _boxes(prompt, spec, masks, shapes, rng=None, jitter=0.0) -> np.ndarray | None:
    """Training/validation prompts in input-frame pixels: ground-truth boxes (jittered) for global-box."""
    if prompt == "none":
        return None
    if prompt == "full-box":
        return np.stack([full_box(spec, hw) for hw in shapes])
    boxes = np.stack([mask_box_to_input(m, hw, spec) for m, hw in zip(masks, shapes, strict=True)])
    if rng is not None and jitter > 0:
        side = np.maximum(boxes[:, 2:] - boxes[:, :2], 1.0)
        noise = rng.uniform(-jitter, jitter, size=boxes.shape) * np.concatenate([side, side], 1)
        boxes = np.clip(boxes + noise.astype(np.float32), 0, spec.size - 1)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    return boxes.astype(np.float32)


def _targets(masks: Sequence[np.ndarray], spec) -> torch.Tensor:
    return torch.from_numpy(np.stack([mask_to_lowres(np.asarray(m, bool), spec) for m in masks]))[:, None]


def set_trainable(teacher: Teacher, mode: str) -> list[torch.nn.Parameter]:
    for p in teacher.sam.parameters():
        p.requires_grad_(False)
    params = list(teacher.sam.mask_decoder.parameters())
    if mode == "lora":
        params += lora_parameters(teacher.sam)
    for p in params:
        p.requires_grad_(True)
    return params


def finetune_teacher(
    teacher: Teacher,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    val_images: Sequence[np.ndarray],
    val_masks: Sequence[np.ndarray],
    *,
    mode: str = "decoder",
    prompt: str | None = None,
    epochs: int = 20,
    lr: float = 2e-4,
    lora_lr: float = 3e-4,
    patience: int = 5,
    seed: int = 0,
    batch_size: int = 4,
    lora: LoraConfig | None = None,
    decoder_warmup_epochs: int = 0,
    augment: bool = True,
    box_jitter: float = 0.1,
    weight_decay: float = 1e-4,
    embedding_cache: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """Fine-tune `teacher` in place on images ((H, W, 3) uint8) and masks ((H, W) bool).

    mode: "decoder" (mask decoder only, cached frozen embeddings) or "lora" (LoRA on the encoder's
    q/v + mask decoder; `lora` config, default rank 4 on every attention block). prompt: the mode
    it is trained for (default: the teacher's); it becomes the teacher's prompt. Early stopping on
    validation Dice with `patience` epochs; the best epoch's weights are restored. Returns a
    `FinetuneResult`, also stored in ``teacher.config.finetune``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if len(images) != len(masks) or len(val_images) != len(val_masks) or not len(images):
        raise ValueError("need as many masks as images, and at least one training image")
    prompt = check_prompt(prompt or teacher.prompt)
    log = log or (lambda msg: None)
    history: list[dict] = []
    if mode == "lora" and decoder_warmup_epochs > 0:
        warm = finetune_teacher(
            teacher, images, masks, val_images, val_masks, mode="decoder", prompt=prompt,
            epochs=decoder_warmup_epochs, lr=lr, patience=patience, seed=seed, batch_size=batch_size,
            box_jitter=box_jitter, weight_decay=weight_decay, embedding_cache=embedding_cache,
            progress=progress, log=log,
        )  # fmt: skip
        history += [{**h, "stage": "decoder"} for h in warm.history]
    if mode == "lora" and not has_lora(teacher.sam):
        teacher.config.lora = lora or LoraConfig()
        add_lora(teacher.sam.image_encoder, teacher.config.lora)
    teacher.prompt = prompt
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = set_trainable(teacher, mode)
    counts = parameter_counts(teacher.sam)
    log(f"{mode} fine-tuning: {counts.trainable:,} trainable / {counts.frozen:,} frozen parameters")
    lora_ids = {id(p) for p in lora_parameters(teacher.sam)}
    groups = [{"params": [p for p in params if id(p) not in lora_ids], "lr": lr}]
    if mode == "lora":
        groups.append({"params": [p for p in params if id(p) in lora_ids], "lr": lora_lr})
    opt = torch.optim.AdamW(groups, weight_decay=weight_decay)

    spec = teacher.input
    shapes = [tuple(np.asarray(im).shape[:2]) for im in images]
    val_shapes = [tuple(np.asarray(im).shape[:2]) for im in val_images]
    dev = teacher.device
    targets, val_targets = _targets(masks, spec).to(dev), _targets(val_masks, spec).to(dev)
    val_boxes = _boxes(prompt, spec, val_masks, val_shapes)
    train_emb = val_emb = None
    if mode == "decoder":
        train_emb = embed_images(teacher, images, embedding_cache, progress=progress)
        val_emb = (
            embed_images(teacher, val_images, embedding_cache, progress=progress) if len(val_images) else None
        )

    def validate() -> float:
        if not len(val_images):
            return float("nan")
        teacher.eval()
        scores = []
        with torch.no_grad():
            for s in range(0, len(val_images), batch_size):
                sl = slice(s, s + batch_size)
                if val_emb is not None:
                    emb = val_emb[sl].float().to(dev)
                else:
                    emb = teacher.encode(torch.from_numpy(to_input_batch(val_images[sl], spec)).to(dev))
                b = None if val_boxes is None else torch.from_numpy(val_boxes[sl]).to(dev)
                scores.append(hard_dice(teacher.decode(emb, b), val_targets[sl]))
        return float(torch.cat(scores).mean())

    def trainable_state() -> dict[str, torch.Tensor]:
        return {k: p.detach().clone() for k, p in teacher.sam.named_parameters() if p.requires_grad}

    start = time.time()
    best_dice, best_epoch, best_state = validate(), 0, trainable_state()
    history.append(
        {"stage": mode, "epoch": 0, "train_loss": float("nan"), "val_dice": best_dice, "seconds": 0.0}
    )
    log(f"epoch 0 (before training): val Dice {best_dice:.4f}")
    steps = (len(images) + batch_size - 1) // batch_size
    bar = _Bar(progress, epochs * steps, f"{mode} fine-tuning")
    epoch, stale = 0, 0
    for epoch in range(1, epochs + 1):
        t0 = time.time()
        teacher.train()
        order = rng.permutation(len(images))
        losses = []
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            if mode == "decoder":
                emb = train_emb[idx].float().to(dev)
                tgt = targets[idx]
                b_masks = [masks[i] for i in idx]
                b_shapes = [shapes[i] for i in idx]
            else:
                ims, b_masks = _augment([images[i] for i in idx], [masks[i] for i in idx], rng, augment)
                b_shapes = [im.shape[:2] for im in ims]
                tgt = _targets(b_masks, spec).to(dev)
                emb = teacher.encode(torch.from_numpy(to_input_batch(ims, spec)).to(dev))
            boxes = _boxes(prompt, spec, b_masks, b_shapes, rng, box_jitter)
            logits = teacher.decode(emb, None if boxes is None else torch.from_numpy(boxes).to(dev))
            loss = seg_loss(logits, tgt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.advance(
                f"{mode} epoch {epoch}/{epochs} loss {np.mean(losses):.3f} best val Dice {best_dice:.3f}"
            )
        val_dice = validate()
        history.append(
            {"stage": mode, "epoch": epoch, "train_loss": float(np.mean(losses)), "val_dice": val_dice,
             "seconds": time.time() - t0}
        )  # fmt: skip
        log(f"epoch {epoch}: loss {np.mean(losses):.4f} val Dice {val_dice:.4f}")
        if not len(val_images) or val_dice > best_dice + 1e-4:
            best_dice, best_epoch, best_state, stale = val_dice, epoch, trainable_state(), 0
        else:
            stale += 1
            if stale >= patience:
                log(f"early stop: no val Dice gain for {patience} epochs")
                break
    bar.stop()
    with torch.no_grad():
        named = dict(teacher.sam.named_parameters())
        for k, v in best_state.items():
            named[k].copy_(v)
    for p in teacher.sam.parameters():
        p.requires_grad_(False)
    teacher.eval()
    result = FinetuneResult(
        mode=mode, prompt=prompt, best_epoch=best_epoch, best_val_dice=best_dice, epochs_run=epoch,
        seconds=time.time() - start, trainable_params=counts.trainable, history=history,
    )  # fmt: skip
    teacher.config.finetune = {k: v for k, v in result.to_dict().items() if k != "history"}
    return result


def _augment(images, masks, rng, enabled: bool):
    """Random horizontal/vertical flips of each (image, mask) pair."""
    if not enabled:
        return [np.asarray(i) for i in images], [np.asarray(m, bool) for m in masks]
    out_i, out_m = [], []
    for im, m in zip(images, masks, strict=True):
        im, m = np.asarray(im), np.asarray(m, bool)
        for axis in (0, 1):
            if rng.random() < 0.5:
                im, m = np.flip(im, axis), np.flip(m, axis)
        out_i.append(np.ascontiguousarray(im))
        out_m.append(np.ascontiguousarray(m))
    return out_i, out_m


class _Bar:
    """A rich progress bar over all steps (no-op when disabled)."""

    def __init__(self, enabled: bool, total: int, desc: str):
        self.p = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.p = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
            )
            self.p.start()
            self.task = self.p.add_task(desc, total=total)

    def advance(self, desc: str) -> None:
        if self.p is not None:
            self.p.update(self.task, advance=1, description=desc)

    def stop(self) -> None:
        if self.p is not None:
            self.p.stop()
