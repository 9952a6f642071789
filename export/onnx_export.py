"""torch student -> FP32 ONNX (legacy exporter, opset 17, dynamic batch, 'image' -> 'logits')."""

from __future__ import annotations

import warnings
from pathlib import Path

from edge.session import INPUT_NAME, OUTPUT_NAME

OPSET = 17


def export_onnx(model, path: str | Path, size: int, opset: int = OPSET) -> Path:
    """Export `model` ((B,3,S,S) -> (B,1,S,S)) in eval mode to `path`; the batch axis is dynamic."""
    import onnx
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    dummy = torch.zeros(1, 3, size, size)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation notices
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    onnx.checker.check_model(str(path))
    return path
