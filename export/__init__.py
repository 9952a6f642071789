"""torch -> ONNX -> INT8 (ONNX Runtime) and OpenVINO IR -> INT8 (NNCF), with measured parity."""
