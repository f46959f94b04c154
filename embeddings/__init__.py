"""Text to vectors: tokenisation, chunking, the ONNX sentence encoder and its export."""

from __future__ import annotations

from embeddings.encoder import DocumentEmbedding, OnnxEncoder, load_encoder

__all__ = ["DocumentEmbedding", "OnnxEncoder", "load_encoder"]
