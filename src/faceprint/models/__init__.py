"""Model catalogue, dlib-format readers, converters to ONNX and ONNX Runtime sessions."""
