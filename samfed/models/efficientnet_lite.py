"""EfficientNet-Lite0 (Tan & Le 2019; Lite: no squeeze-excite, ReLU6, fixed stem/head) as an encoder.

The architecture mirrors the TensorFlow reference the ImageNet weights were trained with: "same"
padding (for stride 2 and an even input the extra row/column is padded at the bottom/right),
BatchNorm eps 1e-3, a residual when a block keeps stride 1 and width. `load_efficientnet_pytorch`
maps a checkpoint in the efficientnet-pytorch key layout (`_conv_stem`, `_bn0`,
`_blocks.N._depthwise_conv`, ..., `_fc`) onto it and loads every tensor strictly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

# (kernel, first stride, expansion, output channels, repeats) per stage of EfficientNet-Lite0.
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
STEM, HEAD = 32, 1280
BN_EPS = 1e-3
# Blocks whose outputs are the encoder's taps at strides 2, 4, 8, 16; the head gives stride 32.
TAP_BLOCKS = (0, 2, 4, 10)
TAP_CHANNELS = (16, 24, 40, 112, HEAD)


class ConvBN(nn.Module):
    """TF-"same" conv (no bias) -> BatchNorm(eps 1e-3) -> optional ReLU6. (B,Cin,H,W) -> (B,Cout,H/s,W/s).

    For stride 2 the input size must be even (the student checks S % 32 == 0), so the TF padding is
    constant: k-2 pixels in total, the extra one after (3x3: 0 before, 1 after; 5x5: 1, 2).
    For stride 1 it is symmetric k//2.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        if stride == 1:
            self.pad: nn.Module = nn.Identity()
            padding = kernel // 2
        else:
            total = kernel - stride  # TF "same" for an input divisible by the stride
            lo, hi = total // 2, total - total // 2
            self.pad = nn.ZeroPad2d((lo, hi, lo, hi))
            padding = 0
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.act = nn.ReLU6() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(self.pad(x))))


class MBConv(nn.Module):
    """Mobile inverted bottleneck without SE. (B,Cin,H,W) -> (B,Cout,H/s,W/s); residual if s=1, Cin=Cout."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = ConvBN(cin, hidden, 1) if expand != 1 else nn.Identity()
        self.dw = ConvBN(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBN(hidden, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """The ImageNet classifier: `features` taps + global pool + `classifier` (1000 logits).

    `taps(x)`: (B,3,S,S) -> [16@S/2, 24@S/4, 40@S/8, 112@S/16, 1280@S/32] (no classifier).
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = ConvBN(3, STEM, 3, 2)
        blocks, cin = [], STEM
        for k, s, e, c, n in LITE0_STAGES:
            for i in range(n):
                blocks.append(MBConv(cin, c, k, s if i == 0 else 1, e))
                cin = c
        self.blocks = nn.ModuleList(blocks)
        self.head = ConvBN(cin, HEAD, 1)
        self.classifier = nn.Linear(HEAD, num_classes)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, y = [], self.stem(x)
        for i, block in enumerate(self.blocks):
            y = block(y)
            if i in TAP_BLOCKS:
                out.append(y)
        out.append(self.head(y))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.taps(x)[-1].mean((2, 3)))


# efficientnet-pytorch name -> this module's name (applied to the key prefix before the tensor name).
_KEY_MAP: tuple[tuple[str, str], ...] = (
    (r"^_conv_stem\.", "stem.conv."),
    (r"^_bn0\.", "stem.bn."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"blocks.\1.expand.conv."),
    (r"^_blocks\.(\d+)\._bn0\.", r"blocks.\1.expand.bn."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"blocks.\1.dw.conv."),
    (r"^_blocks\.(\d+)\._bn1\.", r"blocks.\1.dw.bn."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"blocks.\1.project.conv."),
    (r"^_blocks\.(\d+)\._bn2\.", r"blocks.\1.project.bn."),
    (r"^_conv_head\.", "head.conv."),
    (r"^_bn1\.", "head.bn."),
    (r"^_fc\.", "classifier."),
)


def map_efficientnet_pytorch_key(key: str) -> str:
    """One efficientnet-pytorch key -> the `EfficientNetLite0` key; ValueError for an unknown key."""
    for pattern, repl in _KEY_MAP:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    raise ValueError(f"unexpected key {key!r} in an efficientnet-pytorch checkpoint")


def load_efficientnet_pytorch(model: EfficientNetLite0, state: Mapping[str, torch.Tensor]) -> None:
    """Load an efficientnet-pytorch-layout state dict into `model`: every tensor, strictly.

    Raises ValueError on an unknown key, a missing or unexpected key, or a shape mismatch.
    """
    mapped = {map_efficientnet_pytorch_key(k): v for k, v in state.items()}
    if len(mapped) != len(state):
        raise ValueError("two checkpoint keys map to the same parameter")
    own = model.state_dict()
    bad = [k for k, v in mapped.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise ValueError(f"shape mismatch for {bad[:3]}")
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if missing or unexpected:
        raise ValueError(f"missing keys {missing[:3]}, unexpected keys {unexpected[:3]}")
