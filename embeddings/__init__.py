"""Text to vectors: tokenisation, chunking, the ONNX sentence encoder and its export."""
