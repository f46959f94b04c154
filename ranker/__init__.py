"""The serving side: config, store, FAISS index, features, ONNX scorer, pipeline, gRPC, CLI."""

__version__ = "0.1.0"
"""The package version (`ranker --version`); pyproject.toml reads it from here."""
