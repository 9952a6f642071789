"""Batched segmentation with an exported student: images in, probability maps and masks out.

Torch-free. Preprocessing is `samfed.preprocess` (the definition training uses), so train and
deploy cannot drift apart. Outputs are at each image's original size.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.manifest import MANIFEST_NAME, Manifest, check_preprocessing, check_threshold, load_manifest
from edge.session import Session, backend_of, open_session
from samfed.errors import SamfedError
from samfed.preprocess import Preprocessing, normalize, prob_to_original, resize_image


@dataclass
class Prediction:
    """One image's result at its original size: prob (H, W) float32 in [0, 1], mask (H, W) bool."""

    prob: np.ndarray
    mask: np.ndarray


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically safe logistic function, float32."""
    x = np.clip(x.astype(np.float32, copy=False), -60.0, 60.0)
    return 1.0 / (1.0 + np.exp(-x))


class Predictor:
    """Runs a `Session` on batches of RGB uint8 images of any size."""

    def __init__(self, session: Session, prep: Preprocessing, threshold: float = 0.5, batch: int = 8):
        """SamfedError unless `prep`, `threshold` and the session's input/output shapes fit together."""
        if batch < 1:
            raise SamfedError(f"Batch size must be at least 1, got {batch}.")
        try:
            check_preprocessing(prep)
            check_threshold(threshold)
        except ValueError as exc:
            raise SamfedError(f"Cannot run {session.path}: {exc}.") from None
        session.check_io(prep.size)
        self.session = session
        self.prep = prep
        self.threshold = threshold
        self.batch = batch
        self.artefact = session.path.name
        self.manifest: Manifest | None = None  # the verified export it came from, if any

    @classmethod
    def from_model(
        cls,
        model: str | Path,
        backend: str = "auto",
        precision: str = "auto",
        threads: int | None = None,
        batch: int = 8,
        trusted_keys: Sequence[str] = (),
    ) -> Predictor:
        """Open an export directory (manifest verified) or a bare .onnx/.xml file.

        A bare model file has no manifest: default preprocessing (size taken from a static input
        shape, else 256) and threshold 0.5 are assumed, with a warning. `trusted_keys`: accept only
        an export whose manifest is signed by one of these keys (edge.manifest.load_manifest).
        """
        model = Path(model)
        if model.is_dir() or model.name == MANIFEST_NAME:
            man = load_manifest(model, trusted_keys=trusted_keys)
            art = man.select(backend, precision)
            pred = cls(open_session(art.path, art.backend, threads), man.preprocessing, man.threshold, batch)
            pred.artefact = art.key
            pred.manifest = man
            return pred
        if not model.exists():
            raise SamfedError(f"Model {model} does not exist; pass an export directory or a .onnx file.")
        if trusted_keys:
            raise SamfedError(
                f"{model} is a bare model file, which carries no signature: pass its signed export folder."
            )
        if precision not in ("auto", "fp32", "int8"):
            raise SamfedError(f"Unknown precision {precision!r}; expected auto, int8 or fp32.")
        file_backend = backend_of(model)
        session = open_session(model, file_backend if backend == "auto" else backend, threads)
        size = session.input_size() or Preprocessing().size
        warnings.warn(
            f"{model.name} has no manifest: assuming default preprocessing at {size}px and threshold 0.5, "
            "and its integrity is not verified.",
            stacklevel=2,
        )
        return cls(session, Preprocessing(size=size), 0.5, batch)

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (S, S, 3) uint8 resized (the cheap, thread-friendly half of preprocessing)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise SamfedError(f"Expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}.")
        return resize_image(image, self.prep.size)

    def probs_resized(self, resized: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 -> (B, S, S) float32 probabilities at model resolution (one session call)."""
        logits = self.session.run(normalize(resized, self.prep))
        return sigmoid(logits[:, 0])

    def finish(self, prob: np.ndarray, shape: tuple[int, int]) -> Prediction:
        """(S, S) probability -> Prediction at the original (H, W)."""
        full = prob_to_original(prob, shape)
        return Prediction(full, full >= self.threshold)

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """List of (H, W, 3) uint8 images -> one Prediction per image, in order."""
        return list(self.iter_predict(images))

    def iter_predict(self, images: Iterable[np.ndarray]) -> Iterator[Prediction]:
        """Stream predictions, running the model on batches of `self.batch` images."""
        chunk: list[np.ndarray] = []
        for img in images:
            chunk.append(img)
            if len(chunk) == self.batch:
                yield from self._predict_chunk(chunk)
                chunk = []
        if chunk:
            yield from self._predict_chunk(chunk)

    def _predict_chunk(self, images: list[np.ndarray]) -> Iterator[Prediction]:
        probs = self.probs_resized(np.stack([self.prepare(im) for im in images]))
        for im, p in zip(images, probs, strict=True):
            yield self.finish(p, im.shape[:2])
