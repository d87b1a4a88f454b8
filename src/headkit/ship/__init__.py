"""Shipping a model: save/load (heads.json + safetensors), export (transformers, ONNX), the
ONNX engine, batch prediction, generation with pretraining heads, and the HTTP server."""
