"""Text to vectors: tokenisation, chunking, the ONNX sentence encoder and its export."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from embeddings.encoder import DocumentEmbedding, OnnxEncoder, load_encoder

__all__ = ["DocumentEmbedding", "OnnxEncoder", "load_encoder"]


def __getattr__(name: str) -> Any:
    # Lazy (PEP 562): `embeddings.config` is imported by every CLI command through the settings,
    # and must not drag onnxruntime and tokenizers into `ranker query` or `ranker health`.
    if name in __all__:
        from embeddings import encoder

        return getattr(encoder, name)
    raise AttributeError(f"module 'embeddings' has no attribute {name!r}")
