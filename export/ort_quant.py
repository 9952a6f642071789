"""FP32 ONNX -> INT8 ONNX for ONNX Runtime: `quant_pre_process`, then static QDQ quantisation.

Per-channel weights (QInt8) and unsigned activations (QUInt8): signed activations leave depthwise
convs in float and run slower than FP32. Calibration is MinMax over preprocessed
in-distribution images.
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edge.session import INPUT_NAME


def _reader(calib: np.ndarray, batch: int):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """Yields {'image': (b, 3, S, S) float32} batches of the calibration set."""

        def __init__(self) -> None:
            self.chunks = [calib[i : i + batch] for i in range(0, len(calib), batch)]
            self.i = 0

        def get_next(self):
            if self.i >= len(self.chunks):
                return None
            self.i += 1
            return {INPUT_NAME: np.ascontiguousarray(self.chunks[self.i - 1], dtype=np.float32)}

        def rewind(self) -> None:
            self.i = 0

    return Reader()


@contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization logs one warning per tensor on the root logger; keep errors only."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_onnx_int8(
    fp32_path: str | Path, out_path: str | Path, calib: np.ndarray, batch: int = 8
) -> Path:
    """Quantise `fp32_path` with calibration inputs `calib` (N, 3, S, S) float32; writes `out_path`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as tmp, _quiet_root_logger():
        pre = Path(tmp) / "preprocessed.onnx"
        quant_pre_process(str(fp32_path), str(pre), auto_merge=True)
        quantize_static(
            str(pre),
            str(out_path),
            _reader(calib, batch),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return out_path
