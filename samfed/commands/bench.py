"""`samfed bench`."""

from samfed.commands import not_built


def bench() -> None:
    """Latency of a model across torch, ONNX Runtime and OpenVINO, FP32 and INT8."""
    not_built("bench", "issue 4")
