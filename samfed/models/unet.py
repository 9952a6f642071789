"""`unet-s`: a plain, small U-Net (Ronneberger et al. 2015) with 4 down/up levels.

Encoder: double 3x3 conv blocks, widths base*(1,2,4,8,16) (base 16 -> ~1.9 M params), 2x2 max-pool.
Decoder: 2x2 stride-2 ConvTranspose, concat skip, double 3x3 conv; 1x1 conv to one logit.
"""

from __future__ import annotations

import torch
from torch import nn

from samfed.models.layers import ConvNormAct, Student
from samfed.models.registry import register_student


class DoubleConv(nn.Sequential):
    """Two 3x3 conv-norm-ReLU. (B,Cin,H,W) -> (B,Cout,H,W)."""

    def __init__(self, cin: int, cout: int, norm: str) -> None:
        super().__init__(ConvNormAct(cin, cout, norm=norm), ConvNormAct(cout, cout, norm=norm))


class UpBlock(nn.Module):
    """ConvTranspose x2, concat the skip, double conv. (B,Cin,H,W) + (B,Cs,2H,2W) -> (B,Cout,2H,2W)."""

    def __init__(self, cin: int, cskip: int, cout: int, norm: str) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)
        self.conv = DoubleConv(cout + cskip, cout, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNetS(Student):
    """Plain U-Net. (B,3,S,S) -> logits (B,1,S,S), S divisible by 16."""

    def __init__(self, base: int = 16, norm: str = "batch") -> None:
        super().__init__()
        w = [base * m for m in (1, 2, 4, 8, 16)]
        self.inc = DoubleConv(3, w[0], norm)
        self.downs = nn.ModuleList(DoubleConv(w[i], w[i + 1], norm) for i in range(4))
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList(UpBlock(w[i + 1], w[i], w[i], norm) for i in reversed(range(4)))
        self.head = nn.Conv2d(w[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(self.pool(skips[-1])))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.head(y)


@register_student("unet-s", "plain U-Net (ConvTranspose up)")
def unet_s(norm: str = "batch", base: int = 16) -> UNetS:
    return UNetS(base=base, norm=norm)
