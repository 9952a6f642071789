"""LoRA on the fused qkv projection of the image encoder's attention blocks.

TinyViT (LiteMedSAM) and SAM's ViT both compute q, k, v with ONE `nn.Linear` (``attn.qkv``).
`LoRAQKV` wraps that Linear and adds a low-rank update only to the output rows of the chosen
slices (default q and v): ``W_eff = W + scaling * sum_t scatter_rows(idx_t, B_t @ A_t)``.
Per target t it adds ``rank * (in_features + len(idx_t))`` parameters; ``B`` starts at zero,
so a freshly added LoRA is the identity. `merge_lora` folds the update into a plain Linear.

Row layouts of the fused output:
- SAM ViT: ``[q (dim) | k (dim) | v (dim)]``.
- TinyViT: per head ``[q (key_dim) | k (key_dim) | v (d)]``, heads concatenated.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

TARGETS = ("q", "k", "v")


@dataclass(frozen=True)
class LoraConfig:
    """rank r; targets among q/k/v; blocks = indices of attention blocks (None: all); scaling alpha/r."""

    rank: int = 4
    targets: tuple[str, ...] = ("q", "v")
    blocks: tuple[int, ...] | None = None
    alpha: float | None = None  # None -> alpha = rank (scaling 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["targets"], d["blocks"] = list(self.targets), None if self.blocks is None else list(self.blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LoraConfig:
        blocks = d.get("blocks")
        return cls(
            rank=int(d["rank"]),
            targets=tuple(d["targets"]),
            blocks=None if blocks is None else tuple(int(b) for b in blocks),
            alpha=d.get("alpha"),
        )


def qkv_rows(attn: nn.Module) -> dict[str, torch.Tensor]:
    """Output-row indices of q, k and v in ``attn.qkv`` for a TinyViT or SAM ViT attention module."""
    out = _qkv_linear(attn).out_features
    if hasattr(attn, "key_dim") and hasattr(attn, "d"):  # TinyViT: per-head [q | k | v]
        kd, d, nh = attn.key_dim, attn.d, attn.num_heads
        stride = 2 * kd + d
        assert stride * nh == out, "unexpected TinyViT qkv layout"
        base = torch.arange(nh)[:, None] * stride
        return {
            "q": (base + torch.arange(kd)).flatten(),
            "k": (base + kd + torch.arange(kd)).flatten(),
            "v": (base + 2 * kd + torch.arange(d)).flatten(),
        }
    dim = out // 3  # SAM ViT: [q | k | v]
    return {t: torch.arange(i * dim, (i + 1) * dim) for i, t in enumerate(TARGETS)}


def _qkv_linear(attn: nn.Module) -> nn.Linear:
    qkv = attn.qkv
    return qkv.base if isinstance(qkv, LoRAQKV) else qkv


def attention_modules(encoder: nn.Module) -> list[nn.Module]:
    """The attention modules (anything with a fused ``qkv`` Linear) of `encoder`, in forward order."""
    return [m for m in encoder.modules() if isinstance(getattr(m, "qkv", None), nn.Linear | LoRAQKV)]


class LoRAQKV(nn.Module):
    """A fused qkv Linear plus low-rank updates on some of its output slices.

    Input (..., in_features) -> output (..., out_features), like the wrapped Linear.
    """

    def __init__(self, base: nn.Linear, rows: dict[str, torch.Tensor], rank: int, alpha: float | None = None):
        super().__init__()
        self.base = base
        self.rank = rank
        self.scaling = (alpha if alpha is not None else rank) / rank
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        for t, idx in rows.items():
            self.register_buffer(f"rows_{t}", idx.clone(), persistent=False)
            a = torch.empty(rank, base.in_features)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.lora_A[t] = nn.Parameter(a)
            self.lora_B[t] = nn.Parameter(torch.zeros(len(idx), rank))  # zero: starts as identity

    def delta_weight(self) -> torch.Tensor:
        """(out_features, in_features) low-rank update, already scaled."""
        w = self.base.weight
        delta = torch.zeros_like(w)
        for t in self.lora_A:
            ab = self.lora_B[t] @ self.lora_A[t]
            delta = delta.index_add(0, getattr(self, f"rows_{t}"), ab.to(w.dtype))
        return delta * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.base.weight + self.delta_weight(), self.base.bias)

    def merged(self) -> nn.Linear:
        """A plain Linear whose weight includes the update."""
        lin = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(self.base.weight + self.delta_weight())
            if self.base.bias is not None:
                lin.bias.copy_(self.base.bias)
        return lin.to(self.base.weight.device)


def add_lora(encoder: nn.Module, config: LoraConfig = LoraConfig()) -> int:
    """Wrap the qkv Linear of the selected attention blocks of `encoder` in place.

    Returns the number of LoRA parameters added. Raises ValueError on a bad config."""
    bad = [t for t in config.targets if t not in TARGETS]
    if bad or not config.targets or config.rank < 1:
        raise ValueError(f"bad LoRA config {config}: rank >= 1, targets among {TARGETS}")
    attns = attention_modules(encoder)
    blocks = range(len(attns)) if config.blocks is None else config.blocks
    if any(b < 0 or b >= len(attns) for b in blocks):
        raise ValueError(
            f"LoRA blocks {config.blocks} out of range: the encoder has {len(attns)} attention blocks"
        )
    added = 0
    for b in blocks:
        attn = attns[b]
        if isinstance(attn.qkv, LoRAQKV):
            raise ValueError(f"attention block {b} already has LoRA")
        rows = qkv_rows(attn)
        attn.qkv = LoRAQKV(attn.qkv, {t: rows[t] for t in config.targets}, config.rank, config.alpha)
        added += sum(p.numel() for p in attn.qkv.lora_A.parameters())
        added += sum(p.numel() for p in attn.qkv.lora_B.parameters())
    return added


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRAQKV) for m in model.modules())


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into plain Linear weights, in place; returns `model`."""
    for attn in attention_modules(model):
        if isinstance(attn.qkv, LoRAQKV):
            attn.qkv = attn.qkv.merged()
    return model


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [
        p for m in model.modules() if isinstance(m, LoRAQKV) for p in (*m.lora_A.values(), *m.lora_B.values())
    ]


@dataclass
class ParameterCounts:
    """Parameter counts by part of the teacher; `trainable` / `frozen` are totals."""

    parts: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (trainable, frozen)

    @property
    def trainable(self) -> int:
        return sum(t for t, _ in self.parts.values())

    @property
    def frozen(self) -> int:
        return sum(f for _, f in self.parts.values())


def parameter_counts(sam: nn.Module) -> ParameterCounts:
    """Trainable vs frozen parameters of a `Sam`, split into encoder / LoRA / prompt enc. / decoder."""
    lora_ids = {id(p) for p in lora_parameters(sam)}
    parts = {k: [0, 0] for k in ("image_encoder", "lora", "prompt_encoder", "mask_decoder")}
    for part in ("image_encoder", "prompt_encoder", "mask_decoder"):
        for p in getattr(sam, part).parameters():
            group = parts["lora" if id(p) in lora_ids else part]
            group[0 if p.requires_grad else 1] += p.numel()
    return ParameterCounts({k: (t, f) for k, (t, f) in parts.items()})


def print_parameter_counts(counts: ParameterCounts, title: str = "Teacher parameters") -> None:
    """Rich table of trainable vs frozen parameter counts."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("part", "trainable", "frozen"):
        table.add_column(col, justify="left" if col == "part" else "right")
    for name, (t, f) in counts.parts.items():
        table.add_row(name, f"{t:,}", f"{f:,}")
    table.add_row("total", f"{counts.trainable:,}", f"{counts.frozen:,}", style="bold")
    Console().print(table)
