"""Prompt modes of the teacher and the boxes they produce; torch-free (shared with the edge runtime).

- ``none``: no prompt (empty sparse embedding, the prompt encoder's no-mask dense embedding); the
  decoder learns prompt-free segmentation during fine-tuning.
- ``full-box``: the whole image as the box.
- ``global-box``: the box around the global model's predicted mask, or the full box when that mask
  is empty. Pass the global model's masks as ``prompt_masks``.

`DEFAULT_PROMPT` was chosen by measured teacher Dice on Kvasir-SEG val (benchmarks/teacher.py;
the numbers are in docs/method.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from samfed.errors import SamfedError
from samfed.teacher.transforms import TeacherInput, box_to_input, full_box, mask_box_to_input

PROMPT_MODES = ("none", "full-box", "global-box")
DEFAULT_PROMPT = "full-box"


def check_prompt(prompt: str) -> str:
    if prompt not in PROMPT_MODES:
        raise SamfedError(f"Unknown prompt mode {prompt!r}; choose one of: {', '.join(PROMPT_MODES)}.")
    return prompt


def resolve_boxes(
    prompt: str,
    spec: TeacherInput,
    shapes: Sequence[tuple[int, int]],
    boxes: np.ndarray | None = None,
    prompt_masks: Sequence[np.ndarray] | np.ndarray | None = None,
) -> np.ndarray | None:
    """Boxes in input-frame pixels, (B, 4) float32, or None for the prompt-free mode.

    shapes: (H, W) of each image. Explicit `boxes` ((B, 4) in image pixels) win over the mode;
    `prompt_masks` ((B, h, w) bool, any resolution) give ``global-box`` its boxes.
    """
    check_prompt(prompt)
    n = len(shapes)
    if boxes is not None:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        if len(boxes) != n:
            raise SamfedError(
                f"Got {len(boxes)} boxes for {n} images; give one (x0, y0, x1, y1) box per image."
            )
        return np.stack([box_to_input(b, hw, spec) for b, hw in zip(boxes, shapes, strict=True)])
    if prompt == "none":
        return None
    if prompt == "full-box":
        return np.stack([full_box(spec, hw) for hw in shapes])
    if prompt_masks is None:
        raise SamfedError(
            "Prompt mode global-box needs the global model's masks (prompt_masks), one per image."
        )
    if len(prompt_masks) != n:
        raise SamfedError(f"Got {len(prompt_masks)} prompt masks for {n} images; give one per image.")
    return np.stack([mask_box_to_input(m, hw, spec) for m, hw in zip(prompt_masks, shapes, strict=True)])
