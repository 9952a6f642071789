"""Inference sessions over ONNX Runtime or OpenVINO with one `run(x) -> logits` interface.

Torch-free. Backends are imported lazily, so an install with only one of them still works.
ONNX Runtime runs without thread spinning. OpenVINO is compiled with `INFERENCE_PRECISION_HINT=f32`:
on CPUs with BF16 its default would run an FP32 IR in bf16 and break parity with torch (INT8 IRs
keep their non-quantised ops in f32 too).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from samfed.errors import SamfedError

INPUT_NAME = "image"
OUTPUT_NAME = "logits"


def default_threads() -> int:
    """Threads for one session: the CPUs this process may use."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class Session:
    """A compiled model: `run((B, 3, S, S) float32) -> (B, 1, S, S) float32 logits`.

    `model_seconds` accumulates the wall time spent inside `run` (for pipeline-overhead reports).
    """

    backend: str = ""
    n_inputs: int = 1  # inputs the graph declares
    float_input: bool = True  # whether the first input is float32

    def __init__(self, path: Path, threads: int) -> None:
        self.path = Path(path)
        self.threads = threads
        self.model_seconds = 0.0
        self.calls = 0

    def run(self, x: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            out = self._run(np.ascontiguousarray(x, dtype=np.float32))
        except Exception as exc:  # the runtimes raise their own exception types, with multi-line text
            raise SamfedError(
                f"{self.backend} failed to run {self.path} on a {tuple(x.shape)} input: "
                f"{(str(exc).strip().splitlines() or [type(exc).__name__])[0]}"
            ) from None
        self.model_seconds += time.perf_counter() - t0
        self.calls += 1
        return out

    def _run(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def input_size(self) -> int | None:
        """Static spatial size of the input, or None when it is dynamic."""
        shape = self.input_shape()
        return shape[-1] if shape else None

    def input_shape(self) -> tuple[int | None, ...] | None:
        """The first input's shape (None per dynamic dim), None when even its rank is dynamic."""
        return None

    def output_shape(self) -> tuple[int | None, ...] | None:
        """The first output's shape, as `input_shape`."""
        return None

    def check_io(self, size: int) -> None:
        """SamfedError unless the model takes one (B, 3, size, size) float32 input and gives
        (B, 1, size, size) logits, as far as its static shapes tell."""
        ins, outs = self.input_shape(), self.output_shape()
        problem = ""
        if self.n_inputs != 1 or not self.float_input:
            problem = "it does not take exactly one float32 image input"
        elif ins is not None and (len(ins) != 4 or ins[1] not in (3, None)):
            problem = f"its input shape {list(ins)} is not (batch, 3, H, W)"
        elif outs is not None and (len(outs) != 4 or outs[1] not in (1, None)):
            problem = f"its output shape {list(outs)} is not (batch, 1, H, W)"
        elif ins is not None and any(d not in (size, None) for d in ins[2:]):
            problem = f"it takes {ins[2]}x{ins[3]} px inputs but the preprocessing resizes to {size} px"
        if problem:
            raise SamfedError(f"Model {self.path} does not fit its preprocessing: {problem}.")


class OrtSession(Session):
    backend = "onnxruntime"

    def __init__(self, path: Path, threads: int) -> None:
        super().__init__(path, threads)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # No busy-waiting after each run: on a shared CPU (and beside our own decode/write threads)
        # spinning workers steal the cores the rest of the pipeline needs (measured: 25-35% slower).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise SamfedError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0]}") from None
        self.input = self.sess.get_inputs()[0]
        self.output = self.sess.get_outputs()[0]
        self.output_name = self.output.name
        self.n_inputs = len(self.sess.get_inputs())
        self.float_input = self.input.type == "tensor(float)"

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.sess.run([self.output_name], {self.input.name: x})[0]

    def input_shape(self) -> tuple[int | None, ...] | None:
        return _ort_shape(self.input.shape)

    def output_shape(self) -> tuple[int | None, ...] | None:
        return _ort_shape(self.output.shape)


def _ort_shape(shape: list | None) -> tuple[int | None, ...] | None:
    """ONNX Runtime's shape (ints, names or None per dim) -> ints or None per dim."""
    if shape is None:
        return None
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)


class OpenVinoSession(Session):
    backend = "openvino"

    def __init__(self, path: Path, threads: int) -> None:
        super().__init__(path, threads)
        import openvino as ov

        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }
        try:
            self.model = core.read_model(str(path))
            self.compiled = core.compile_model(self.model, "CPU", config)
        except Exception as exc:  # openvino raises RuntimeError with multi-line text
            raise SamfedError(f"OpenVINO cannot load {path}: {str(exc).splitlines()[0]}") from None
        self.request = self.compiled.create_infer_request()
        self.n_inputs = len(self.model.inputs)
        self.float_input = self.model.inputs[0].get_element_type() == ov.Type.f32

    def _run(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: x})
        return self.request.get_output_tensor(0).data.copy()

    def input_shape(self) -> tuple[int | None, ...] | None:
        return _ov_shape(self.model.inputs[0].get_partial_shape())

    def output_shape(self) -> tuple[int | None, ...] | None:
        return _ov_shape(self.model.outputs[0].get_partial_shape())


def _ov_shape(shape) -> tuple[int | None, ...] | None:
    """OpenVINO PartialShape -> ints or None per dim; None when the rank is dynamic."""
    if shape.rank.is_dynamic:
        return None
    return tuple(d.get_length() if d.is_static else None for d in shape)


def backend_of(path: str | Path) -> str:
    """The backend a model file belongs to, from its suffix (.onnx or .xml)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return "onnxruntime"
    if suffix == ".xml":
        return "openvino"
    raise SamfedError(f"Model file {path} is neither an ONNX (.onnx) nor an OpenVINO IR (.xml) file.")


def open_session(path: str | Path, backend: str | None = None, threads: int | None = None) -> Session:
    """Open `path` on `backend` ("onnxruntime" | "openvino"; inferred from the suffix when None)."""
    path = Path(path)
    if not path.is_file():
        raise SamfedError(f"Model file {path} does not exist.")
    backend = backend or backend_of(path)
    threads = threads or default_threads()
    if backend == "onnxruntime":
        if path.suffix.lower() != ".onnx":
            raise SamfedError(f"ONNX Runtime needs an .onnx file, got {path}.")
        return OrtSession(path, threads)
    if backend == "openvino":
        return OpenVinoSession(path, threads)
    raise SamfedError(f"Unknown backend {backend!r}; expected onnxruntime or openvino.")
