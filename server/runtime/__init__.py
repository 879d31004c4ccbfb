"""The engine: model repository, decode, preprocess, batching, onnxruntime sessions."""
