"""The serving side: config, store, FAISS index, features, ONNX scorer, pipeline, gRPC, CLI."""
