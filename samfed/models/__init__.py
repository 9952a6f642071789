"""Student zoo: compact segmentation models created by name.

>>> from samfed.models import create_student
>>> model = create_student("mobile-unet", norm="group")   # (B,3,S,S) -> logits (B,1,S,S)
>>> model = create_student("mnv2-unet")                   # ImageNet MobileNetV2 encoder, S % 32 == 0

Each family lives in its own module and registers itself with `@register_student`.
"""

from samfed.models import mobile_unet, pretrained_unet, resunet_lite, unet  # noqa: F401  (register the families)
from samfed.models.registry import (
    STUDENTS,
    StudentSpec,
    build_options,
    create_student,
    list_students,
    register_student,
)
from samfed.models.stats import count_parameters, gflops

__all__ = [
    "STUDENTS",
    "StudentSpec",
    "build_options",
    "count_parameters",
    "create_student",
    "gflops",
    "list_students",
    "register_student",
]
