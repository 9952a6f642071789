"""Student registry by name (timm-like): `@register_student`, `create_student`, `list_students`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from samfed.models.layers import NORMS


@dataclass(frozen=True)
class StudentSpec:
    """One registered student: its name, a one-line family description and its factory."""

    name: str
    description: str
    factory: Callable[..., nn.Module]
    norms: tuple[str, ...] = NORMS


STUDENTS: dict[str, StudentSpec] = {}


def register_student(name: str, description: str) -> Callable[[Callable[..., nn.Module]], Callable]:
    """Decorator: register a factory `f(norm='batch', **kw) -> nn.Module` under `name`."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in STUDENTS:
            raise ValueError(f"student {name!r} is already registered")
        STUDENTS[name] = StudentSpec(name, description, factory)
        return factory

    return wrap


def list_students() -> list[str]:
    """Registered student names, sorted."""
    return sorted(STUDENTS)


def create_student(name: str, norm: str = "batch", **kw) -> nn.Module:
    """Build student `name` with BatchNorm (`batch`) or GroupNorm (`group`).

    The model maps (B,3,S,S) normalised float to logits (B,1,S,S), S divisible by 16.
    Unknown names or norms raise `SamfedError` (a user can type them on the command line).
    """
    from samfed.errors import SamfedError

    if name not in STUDENTS:
        raise SamfedError(f"unknown student {name!r}; choose one of: {', '.join(list_students())}.")
    if norm not in STUDENTS[name].norms:
        raise SamfedError(f"unknown norm {norm!r} for student {name!r}; choose one of: {', '.join(NORMS)}.")
    return STUDENTS[name].factory(norm=norm, **kw)
