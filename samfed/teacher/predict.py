"""The numpy `predict_proba` contract shared by the torch `Teacher` and `edge.teacher_runtime.OnnxTeacher`.

Torch-free: a subclass supplies `_run` (encoder + decoder on one preprocessed batch).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from samfed.teacher.prompts import resolve_boxes
from samfed.teacher.transforms import TeacherInput, lowres_to_prob, to_input_batch


class PredictMixin:
    """Adds `predict_logits` / `predict_proba`; needs ``input``, ``prompt`` and `_run`."""

    input: TeacherInput
    prompt: str

    def _run(self, x: np.ndarray, boxes: np.ndarray | None) -> np.ndarray:
        """(B, 3, S, S) float32 + (B, 4) input-frame boxes or None -> (B, L, L) low-res logits."""
        raise NotImplementedError

    def predict_logits(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        boxes: np.ndarray | None = None,
        prompt_masks: Sequence[np.ndarray] | None = None,
        prompt: str | None = None,
        batch_size: int = 8,
    ) -> np.ndarray:
        """Images (B, H, W, 3) uint8 (or a list of differently sized ones) -> (B, L, L) low-res logits."""
        shapes = [tuple(np.asarray(im).shape[:2]) for im in images]
        inboxes = resolve_boxes(prompt or self.prompt, self.input, shapes, boxes, prompt_masks)
        out = []
        for s in range(0, len(shapes), batch_size):
            x = to_input_batch(images[s : s + batch_size], self.input)
            out.append(self._run(x, None if inboxes is None else inboxes[s : s + batch_size]))
        return np.concatenate(out) if out else np.zeros((0, self.input.lowres, self.input.lowres), np.float32)

    def predict_proba(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        out_size: int,
        boxes: np.ndarray | None = None,
        prompt_masks: Sequence[np.ndarray] | None = None,
        prompt: str | None = None,
        batch_size: int = 8,
    ) -> np.ndarray:
        """Foreground probabilities (B, out_size, out_size) float32 in the student's stretched frame.

        images: (B, H, W, 3) uint8 (or a list of (H, W, 3)). boxes: optional (B, 4) (x0, y0, x1, y1)
        in image pixels, overriding the prompt mode. prompt_masks: (B, h, w) bool masks of the
        global model, for ``global-box``. prompt: override the prompt mode for this call.
        batch_size: images per encoder batch. The low-res logits are resized bilinearly to
        out_size, then passed through the sigmoid."""
        if len(images) == 0:
            return np.zeros((0, out_size, out_size), np.float32)
        logits = self.predict_logits(images, boxes, prompt_masks, prompt, batch_size)
        shapes = [tuple(np.asarray(im).shape[:2]) for im in images]
        probs = [lowres_to_prob(lg, hw, self.input, out_size) for lg, hw in zip(logits, shapes, strict=True)]
        return np.stack(probs)
