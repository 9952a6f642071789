"""`mobile-unet`: MobileNetV2-style inverted-residual encoder with a light depthwise decoder.

Encoder (Sandler et al. 2018, truncated at stride 16): 3x3 stem (stride 2), inverted residual
blocks (1x1 expand -> 3x3 depthwise -> 1x1 linear project, ReLU6, residual when shapes match).
Decoder: nearest x2 upsample, concat skip, depthwise-separable conv; a final x2 upsample to full
resolution with one more depthwise-separable conv, then a 1x1 conv to one logit.
"""

from __future__ import annotations

import torch
from torch import nn

from samfed.models.layers import ConvNormAct, Student, upsample
from samfed.models.registry import register_student

# (expansion t, output channels c, repeats n, first stride s) per stage, as in MobileNetV2.
# Skips are taken at strides 2, 4, 8; the bottleneck is at stride 16.
STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),  # stride 2
    (6, 24, 2, 2),  # stride 4
    (6, 32, 3, 2),  # stride 8
    (6, 64, 4, 2),  # stride 16
    (6, 96, 3, 1),
    (6, 160, 2, 1),
)
SKIP_STAGES = (0, 1, 2)  # stage indices whose outputs feed the decoder


class InvertedResidual(nn.Module):
    """MobileNetV2 block. (B,Cin,H,W) -> (B,Cout,H/s,W/s); identity shortcut when s=1 and Cin=Cout."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, norm: str) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvNormAct(cin, hidden, 1, norm=norm, act="relu6"))
        layers += [
            ConvNormAct(hidden, hidden, 3, stride, groups=hidden, norm=norm, act="relu6"),
            ConvNormAct(hidden, cout, 1, norm=norm, act=None),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class SepConv(nn.Sequential):
    """Depthwise 3x3 + pointwise 1x1, each with norm + ReLU6. (B,Cin,H,W) -> (B,Cout,H,W)."""

    def __init__(self, cin: int, cout: int, norm: str) -> None:
        super().__init__(
            ConvNormAct(cin, cin, 3, groups=cin, norm=norm, act="relu6"),
            ConvNormAct(cin, cout, 1, norm=norm, act="relu6"),
        )


class MobileUNet(Student):
    """MobileNetV2 encoder + depthwise U-Net decoder. (B,3,S,S) -> logits (B,1,S,S), S % 16 == 0."""

    def __init__(self, norm: str = "batch", width: float = 1.0, decoder: tuple[int, ...] = (96, 48, 32, 16)):
        super().__init__()

        def ch(c: int) -> int:
            return max(8, int(round(c * width / 8)) * 8)

        stem = ch(32)
        self.stem = ConvNormAct(3, stem, 3, 2, norm=norm, act="relu6")
        stages, cin, skip_ch = [], stem, []
        for t, c, n, s in STAGES:
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(cin, ch(c), s if i == 0 else 1, t, norm))
                cin = ch(c)
            stages.append(nn.Sequential(*blocks))
            skip_ch.append(cin)
        self.stages = nn.ModuleList(stages)
        self.decoder = nn.ModuleList()
        for skip_stage, cout in zip(reversed(SKIP_STAGES), decoder[:3], strict=True):
            self.decoder.append(SepConv(cin + skip_ch[skip_stage], cout, norm))
            cin = cout
        self.final = SepConv(cin, decoder[3], norm)
        self.head = nn.Conv2d(decoder[3], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        y = self.stem(x)
        skips = []
        for i, stage in enumerate(self.stages):
            y = stage(y)
            if i in SKIP_STAGES:
                skips.append(y)
        for block in self.decoder:
            y = block(torch.cat([upsample(y), skips.pop()], dim=1))
        return self.head(self.final(upsample(y)))


@register_student("mobile-unet", "MobileNetV2 encoder, dw decoder")
def mobile_unet(norm: str = "batch", width: float = 1.0) -> MobileUNet:
    return MobileUNet(norm=norm, width=width)
