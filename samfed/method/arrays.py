"""In-memory image sets for the method: uint8 images at the working size, optional masks and maps.

`SegArrays` is what every runner hands to the method functions: the server's labeled set D_p, a
client's unlabeled set D_c (its masks, when they exist, are used for logging only, never for
training) or a validation set. Batches are normalised with `samfed.preprocess.normalize`, the
single definition of student preprocessing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from samfed.method.device import model_device
from samfed.preprocess import Preprocessing, normalize


@dataclass
class SegArrays:
    """images (N, S, S, 3) uint8; masks (N, S, S) bool or None; ids: N strings."""

    images: np.ndarray
    masks: np.ndarray | None
    ids: list[str]
    _on_device: dict = field(default_factory=dict, repr=False, compare=False)  # device -> (images, masks)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx: list[int] | np.ndarray) -> SegArrays:
        idx = np.asarray(idx, dtype=np.int64)
        masks = None if self.masks is None else self.masks[idx]
        return SegArrays(self.images[idx], masks, [self.ids[i] for i in idx])

    def _device_batch(self, idx: np.ndarray, prep: Preprocessing, device: torch.device):
        key = str(device)
        if key not in self._on_device:
            masks = None if self.masks is None else torch.from_numpy(self.masks).to(device)
            self._on_device[key] = (torch.from_numpy(self.images).to(device), masks)
        images, masks = self._on_device[key]
        i = torch.from_numpy(idx).to(device)
        y = None if masks is None else masks[i, None].float()
        return normalize_tensor(images[i], prep), y

    def batch(
        self, idx: torch.Tensor | np.ndarray, prep: Preprocessing, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 3, S, S) float32 normalised images and (B, 1, S, S) float32 masks (or None) on `device`.

        On an accelerator the uint8 set is uploaded once and batches are gathered and normalised
        there (`normalize_tensor`): no per-step host work or copies."""
        idx = np.asarray(idx, dtype=np.int64)
        device = torch.device(device)
        if device.type != "cpu":
            return self._device_batch(idx, prep, device)
        x = torch.from_numpy(normalize(self.images[idx], prep))
        y = None if self.masks is None else torch.from_numpy(self.masks[idx, None].astype(np.float32))
        return x, y


def normalize_tensor(images: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """`samfed.preprocess.normalize` for a uint8 tensor (B, S, S, 3) on any device -> (B, 3, S, S)."""
    mean = torch.tensor(prep.mean, dtype=torch.float32, device=images.device)
    std = torch.tensor(prep.std, dtype=torch.float32, device=images.device)
    x = (images.float() / 255.0 - mean) / std
    return x.permute(0, 3, 1, 2).contiguous()


def concat(parts: list[SegArrays]) -> SegArrays:
    """Concatenate sets; masks survive only if every part has them."""
    masks = None if any(p.masks is None for p in parts) else np.concatenate([p.masks for p in parts])
    return SegArrays(np.concatenate([p.images for p in parts]), masks, [i for p in parts for i in p.ids])


def derive_seed(*keys: object) -> int:
    """A 63-bit seed from any tuple of keys (stable across processes, unlike `hash`)."""
    digest = hashlib.sha256(repr(keys).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(*keys: object) -> torch.Generator:
    """A CPU `torch.Generator` seeded by `derive_seed(*keys)`."""
    return torch.Generator().manual_seed(derive_seed(*keys))


class Cycler:
    """Endless shuffled index stream over n items (a new permutation from `gen` per pass)."""

    def __init__(self, n: int, gen: torch.Generator):
        self.n, self.gen, self.buf = n, gen, torch.empty(0, dtype=torch.long)

    def take(self, k: int) -> torch.Tensor:
        while len(self.buf) < k:
            self.buf = torch.cat([self.buf, torch.randperm(self.n, generator=self.gen)])
        out, self.buf = self.buf[:k], self.buf[k:]
        return out


@torch.no_grad()
def predict_proba(
    model: torch.nn.Module, data: SegArrays, prep: Preprocessing, batch_size: int = 16
) -> np.ndarray:
    """Foreground probabilities (N, S, S) float32 of `model` in eval mode (mode restored after)."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    out = []
    for start in range(0, len(data), batch_size):
        x, _ = data.batch(np.arange(start, min(start + batch_size, len(data))), prep, device)
        out.append(torch.sigmoid(model(x))[:, 0].float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, prep.size, prep.size), np.float32)
