"""Teacher maps for a run, computed once per image and cached; encoder embeddings cached too.

The teacher's image encoder is the expensive part (about 1 s per image on a CPU) and it does not
change when only the mask decoder is fine-tuned. `EmbeddingCachedTeacher` wraps a `Teacher` so
that `predict_proba` takes the image embeddings from `samfed.teacher.embeddings.embed_images`'
disk cache (keyed by the encoder's hash and the image), then runs the cheap decoder. So every
benchmark row and seed that shares an encoder pays the encoder once per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from samfed.teacher.predict import PredictMixin
from samfed.teacher.prompts import resolve_boxes


class EmbeddingCachedTeacher(PredictMixin):
    """Same `predict_proba` contract, hash and prompt as `teacher`; embeddings from `cache_dir`."""

    def __init__(self, teacher, cache_dir: str | Path):
        self.teacher, self.cache_dir = teacher, Path(cache_dir)
        self.input = teacher.input

    @property
    def prompt(self) -> str:
        return self.teacher.prompt

    @property
    def hash(self) -> str:
        return self.teacher.hash

    @property
    def name(self) -> str:
        return self.teacher.name

    def predict_logits(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        boxes: np.ndarray | None = None,
        prompt_masks: Sequence[np.ndarray] | None = None,
        prompt: str | None = None,
        batch_size: int = 8,
    ) -> np.ndarray:
        """(B, L, L) low-res logits, like `Teacher.predict_logits`."""
        from samfed.teacher.embeddings import embed_images

        shapes = [tuple(np.asarray(im).shape[:2]) for im in images]
        inboxes = resolve_boxes(prompt or self.prompt, self.input, shapes, boxes, prompt_masks)
        emb = embed_images(self.teacher, list(images), self.cache_dir, batch_size=min(batch_size, 4))
        self.teacher.eval()
        with torch.no_grad():
            dev = self.teacher.device
            b = None if inboxes is None else torch.from_numpy(np.asarray(inboxes, np.float32)).to(dev)
            logits = self.teacher.decode(emb.float().to(dev), b)
        return logits[:, 0].float().cpu().numpy()
