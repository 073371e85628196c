"""One module per inference backend (ONNX Runtime, OpenVINO, TensorRT); each imports its SDK lazily."""
