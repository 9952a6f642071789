"""`samfed export`."""

from samfed.commands import not_built


def export() -> None:
    """Export a trained student to ONNX / OpenVINO, FP32 and INT8, with a parity manifest."""
    not_built("export", "issue 4")
