"""`resunet-lite`: residual encoder with squeeze-excitation + FPN decoder.

Different from the U-Nets by design: the encoder is ResNet-style (two basic residual blocks per
stage, each with a squeeze-excitation channel gate), and the decoder is a Feature Pyramid Network
(Lin et al. 2017; semantic-FPN head of Kirillov et al. 2019): 1x1 laterals to a common width,
top-down nearest upsample + add, a 3x3 conv per level, bilinear upsample of every level to stride 2
and a sum, then a full-resolution refinement conv and a 1x1 conv to one logit.
"""

from __future__ import annotations

import torch
from torch import nn

from samfed.models.layers import ConvNormAct, Student, upsample
from samfed.models.registry import register_student


class SqueezeExcite(nn.Module):
    """Channel gate: global average pool -> 1x1 -> ReLU -> 1x1 -> sigmoid -> scale. Shape-preserving."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(8, channels // reduction)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class BasicBlock(nn.Module):
    """ResNet basic block + SE. (B,Cin,H,W) -> (B,Cout,H/s,W/s); 1x1 projection shortcut if needed."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str, se: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvNormAct(cin, cout, 3, stride, norm=norm),
            ConvNormAct(cout, cout, 3, norm=norm, act=None),
            SqueezeExcite(cout) if se else nn.Identity(),
        )
        self.short = (
            nn.Identity()
            if stride == 1 and cin == cout
            else ConvNormAct(cin, cout, 1, stride, norm=norm, act=None)
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.short(x))


class ResUNetLite(Student):
    """Residual-SE encoder (strides 2..16) + FPN decoder. (B,3,S,S) -> logits (B,1,S,S), S % 16 == 0."""

    def __init__(
        self,
        norm: str = "batch",
        widths: tuple[int, ...] = (24, 48, 96, 160),
        fpn: int = 64,
        seg: int = 32,
        se: bool = True,
    ) -> None:
        super().__init__()
        self.stem = ConvNormAct(3, widths[0], 3, 2, norm=norm)  # stride 2
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(cin, w, stride, norm, se), BasicBlock(w, w, 1, norm, se)))
            cin = w
        self.stages = nn.ModuleList(stages)  # outputs at strides 2, 4, 8, 16
        self.laterals = nn.ModuleList(nn.Conv2d(w, fpn, 1) for w in widths)
        self.smooth = nn.ModuleList(ConvNormAct(fpn, seg, 3, norm=norm) for _ in widths)
        self.refine = ConvNormAct(seg, seg // 2, 3, norm=norm)
        self.head = nn.Conv2d(seg // 2, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        feats, y = [], self.stem(x)
        for stage in self.stages:
            y = stage(y)
            feats.append(y)
        # Top-down pathway: coarsest first, nearest x2 upsample + lateral add.
        p = self.laterals[-1](feats[-1])
        pyramid = [p]
        for lat, f in zip(reversed(self.laterals[:-1]), reversed(feats[:-1]), strict=True):
            p = upsample(p) + lat(f)
            pyramid.append(p)
        pyramid.reverse()  # strides 2, 4, 8, 16
        # Semantic-FPN merge at stride 2: each level conv'd and bilinearly upsampled, then summed.
        merged = self.smooth[0](pyramid[0])
        for level in range(1, len(pyramid)):
            merged = merged + upsample(self.smooth[level](pyramid[level]), "bilinear", 2**level)
        return self.head(self.refine(upsample(merged, "bilinear")))


@register_student("resunet-lite", "residual-SE encoder, FPN decoder")
def resunet_lite(norm: str = "batch", se: bool = True) -> ResUNetLite:
    return ResUNetLite(norm=norm, se=se)
