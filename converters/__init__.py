"""PyTorch -> ONNX -> FP16 / INT8 Q/DQ ONNX -> TensorRT engines, each checked against ONNX Runtime."""
