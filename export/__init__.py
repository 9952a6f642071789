"""torch -> ONNX -> INT8 (ONNX Runtime) and OpenVINO IR -> INT8 (NNCF), with measured parity.

Modules: `checkpoint` (the student checkpoint contract), `onnx_export`, `ort_quant`,
`openvino_export`, `images` (calibration / held-out images), `parity`, `latency`, `recommend`,
`manifest_writer`, `build` (`samfed export` end to end) and `bench` (`samfed bench`).
Importing the package imports no torch; modules that need it import it inside functions.
"""
