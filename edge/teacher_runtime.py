"""Run an exported teacher (`samfed teacher export`) with ONNX Runtime or OpenVINO; torch-free.

`predict_proba` comes from `samfed.teacher.predict.PredictMixin`, as for the torch
`samfed.teacher.Teacher`, so `samfed.teacher.cache.teacher_maps`
works with it on a clinic workstation without torch.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from pathlib import Path

import numpy as np

from edge.manifest import member_path
from edge.onnx_external import external_data_locations
from samfed.errors import SamfedError
from samfed.teacher.predict import PredictMixin
from samfed.teacher.prompts import check_prompt
from samfed.teacher.transforms import TeacherInput

MANIFEST = "teacher_onnx.json"
BACKENDS = ("onnxruntime", "openvino")


class _OrtGraph:
    def __init__(self, path: Path, threads: int | None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, **inputs: np.ndarray) -> np.ndarray:
        return self.sess.run(None, inputs)[0]


class _OvGraph:
    def __init__(self, path: Path, threads: int | None):
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": "f32"}  # CPUs with BF16 would otherwise run bf16
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.model = ov.Core().compile_model(str(path), "CPU", config)

    def __call__(self, **inputs: np.ndarray) -> np.ndarray:
        return np.asarray(self.model(inputs)[self.model.output(0)])


def _graph_paths(folder: Path, encoder: object, decoders: object) -> dict[str, Path]:
    """{"encoder" | decoder key: path} of the teacher's .onnx files, each (and its external data)
    inside `folder`; SamfedError for a malformed list, a path leaving the folder or a missing file."""
    if not isinstance(decoders, dict) or not {"none", "box"} <= set(decoders):
        raise SamfedError(f"{folder}/{MANIFEST} must name the decoders 'none' and 'box'.")
    paths: dict[str, Path] = {}
    try:
        for key, name in {"encoder": encoder, **decoders}.items():
            paths[key] = member_path(folder, name, f"teacher {key} file")
            if not paths[key].is_file():
                raise SamfedError(f"Exported teacher {folder} lacks {name}.")
            parent = paths[key].parent.relative_to(folder).as_posix()
            for loc in external_data_locations(paths[key]):
                member_path(folder, posixpath.join(parent, loc), f"external data of {name}")
    except ValueError as exc:
        raise SamfedError(f"Exported teacher {folder} is not valid: {exc}.") from None
    return paths


class OnnxTeacher(PredictMixin):
    """An exported teacher folder run on CPU. `backend`: "onnxruntime" or "openvino"."""

    def __init__(self, folder: str | Path, backend: str = "onnxruntime", threads: int | None = None):
        folder = Path(folder)
        try:
            self.manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            self.input = TeacherInput.from_dict(self.manifest["input"])
            encoder, decoders = self.manifest["encoder"], self.manifest["decoders"]
        except (OSError, ValueError, KeyError, TypeError):
            raise SamfedError(f"{folder} is not an exported teacher (no valid {MANIFEST}).") from None
        if backend not in BACKENDS:
            raise SamfedError(f"Unknown teacher runtime {backend!r}; choose one of: {', '.join(BACKENDS)}.")
        graph = _OrtGraph if backend == "onnxruntime" else _OvGraph
        paths = _graph_paths(folder, encoder, decoders)
        self.backend = backend
        self.prompt = check_prompt(self.manifest["prompt"])
        self.encoder = graph(paths["encoder"], threads)
        self.decoders = {k: graph(paths[k], threads) for k in decoders}
        # maps of different runtimes never share cache entries with the torch teacher
        self.hash = hashlib.sha256(f"{self.manifest['teacher_hash']}:{backend}".encode()).hexdigest()

    def encode(self, x: np.ndarray) -> np.ndarray:
        """(B, 3, S, S) float32 -> (B, 256, E, E) float32 (the graph takes one image at a time)."""
        return np.concatenate(
            [self.encoder(image=np.ascontiguousarray(x[i : i + 1], np.float32)) for i in range(len(x))]
        )

    def decode(self, embeddings: np.ndarray, boxes: np.ndarray | None) -> np.ndarray:
        """(B, 256, E, E) + (B, 4) input-frame boxes or None -> (B, L, L) low-res logits."""
        out = []
        for i in range(len(embeddings)):
            emb = np.ascontiguousarray(embeddings[i : i + 1], np.float32)
            if boxes is None:
                out.append(self.decoders["none"](embeddings=emb))
            else:
                out.append(self.decoders["box"](embeddings=emb, box=boxes[i : i + 1].astype(np.float32)))
        return np.concatenate(out)[:, 0]

    def _run(self, x: np.ndarray, boxes: np.ndarray | None) -> np.ndarray:
        return self.decode(self.encode(x), boxes)
