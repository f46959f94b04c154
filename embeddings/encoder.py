"""The ONNX sentence encoder: tokenizers + onnxruntime only, length-sorted batches, chunked long texts."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from embeddings.chunking import chunk_spans, combine
from embeddings.config import EncoderSettings
from embeddings.manifest import (
    INT8_MODEL_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    EncoderManifest,
    is_valid_export,
)
from embeddings.runtime import make_session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DocumentEmbedding:
    """A text's vector and the vectors of the chunks it was split into (one chunk if it fits)."""

    vector: np.ndarray
    """(dim,) float32 unit vector of the whole text."""
    chunks: np.ndarray
    """(k, dim) float32 unit vectors, k >= 1, in text order."""

    def __post_init__(self) -> None:
        if self.vector.ndim != 1 or self.chunks.ndim != 2 or len(self.chunks) < 1:
            raise ValueError("a document embedding needs a (dim,) vector and (k >= 1, dim) chunks")
        if self.chunks.shape[1] != self.vector.shape[0]:
            raise ValueError("document vector and chunk vectors differ in dimension")


def _validated(texts: Sequence[str]) -> list[str]:
    """The texts, checked, with lone surrogates replaced so the Rust tokenizer accepts them."""
    if isinstance(texts, str):
        raise TypeError("encode takes a list of texts, not one string: wrap it as [text]")
    out = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is {type(text).__name__}, not str")
        if not text.strip():
            raise ValueError(
                f"text {i} is empty or whitespace-only; drop it or send real text "
                "(an empty CV or posting has no meaningful embedding)"
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # A str may hold unpaired surrogates (e.g. from a bad JSON escape); UTF-16 with
            # surrogatepass pairs what can be paired and turns the rest into U+FFFD.
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        out.append(text)
    return out


class OnnxEncoder:
    """Texts to unit vectors with the exported all-MiniLM-L6-v2; safe to share between threads."""

    def __init__(self, path: Path, settings: EncoderSettings | None = None) -> None:
        self._settings = settings if settings is not None else EncoderSettings()
        self.path = Path(path)
        self._manifest = EncoderManifest.read(self.path)
        # Checking hashes costs ~0.1 s and turns a truncated copy into a clear error at start-up
        # instead of garbage vectors or a cryptic protobuf failure later.
        self._manifest.verify_files(self.path)
        self.quantized = self._settings.encoder_quantized and self._manifest.int8_available
        if self._settings.encoder_quantized and not self.quantized:
            log.warning(
                "RANKER_ENCODER_QUANTIZED is set but %s has no int8 model (it did not reach "
                "cosine 0.99 to fp32 at export); using fp32",
                self.path,
            )
        model_file = INT8_MODEL_FILE if self.quantized else MODEL_FILE
        self._session = make_session(self.path / model_file, self._settings.ort_session)
        self._input_names = [i.name for i in self._session.get_inputs()]

        self._tokenizer = Tokenizer.from_file(str(self.path / TOKENIZER_FILE))
        # The upstream tokenizer.json truncates and pads to a fixed 128 tokens: we chunk at the
        # model's real window (256) ourselves and pad each batch only to its longest member.
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        special = self._manifest.special_tokens
        self._cls_id = self._token_id(special["cls"])
        self._sep_id = self._token_id(special["sep"])
        self._pad_id = self._token_id(special["pad"])
        # [CLS] and [SEP] take two positions of every window.
        self._window = self._manifest.max_seq_length - 2
        chunk_spans(0, self._window, self._settings.chunk_overlap)  # a bad overlap fails here

    def _token_id(self, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"tokenizer in {self.path} has no {token!r}; re-export the encoder")
        return token_id

    @property
    def dim(self) -> int:
        return self._manifest.dim

    @property
    def max_seq_length(self) -> int:
        return self._manifest.max_seq_length

    @property
    def manifest(self) -> dict[str, Any]:
        return self._manifest.to_dict()

    def encode(self, texts: list[str], checkpoint: Callable[[], None] | None = None) -> np.ndarray:
        """(n, dim) float32 unit vectors; texts longer than the window are chunked and combined.

        `checkpoint`, when given, is called before each batch of windows: raising from it stops
        the encoding there (a server whose caller gave up stops using the CPU).
        """
        docs = self.encode_documents(texts, checkpoint)
        if not docs:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([d.vector for d in docs])

    def encode_documents(
        self, texts: list[str], checkpoint: Callable[[], None] | None = None
    ) -> list[DocumentEmbedding]:
        """Per text: the combined vector and the vector of each chunk (`checkpoint` as in `encode`)."""
        cleaned = _validated(texts)
        if not cleaned:
            return []
        sequences: list[np.ndarray] = []
        owners: list[tuple[int, list[tuple[int, int]]]] = []
        for i, token_ids in enumerate(self._token_ids(cleaned)):
            if not token_ids:
                raise ValueError(
                    f"text {i} has no tokens (only control, zero-width or formatting "
                    "characters); drop it or send real text"
                )
            ids = np.asarray(token_ids, dtype=np.int64)
            spans = chunk_spans(len(ids), self._window, self._settings.chunk_overlap)
            owners.append((len(sequences), spans))
            for start, end in spans:
                sequences.append(ids[start:end])
        vectors = self._run(sequences, checkpoint)
        docs = []
        for first, spans in owners:
            chunks = vectors[first : first + len(spans)]
            docs.append(DocumentEmbedding(vector=combine(chunks, spans), chunks=chunks))
        return docs

    def encode_token_windows(self, windows: Sequence[Sequence[int]]) -> np.ndarray:
        """(n, dim) vectors of token-id sequences (no special tokens), each at most one window."""
        for i, w in enumerate(windows):
            if len(w) > self._window:
                raise ValueError(f"window {i} has {len(w)} tokens; at most {self._window} fit")
        return self._run([np.asarray(w, dtype=np.int64) for w in windows])

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text without special tokens (what chunking splits)."""
        return self._token_ids(_validated(texts))

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        # encode_batch tokenizes in parallel in Rust, outside the GIL.
        return [enc.ids for enc in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def _run(
        self, sequences: list[np.ndarray], checkpoint: Callable[[], None] | None = None
    ) -> np.ndarray:
        """Encode content-token sequences (each within the window) in length-sorted batches."""
        out = np.empty((len(sequences), self.dim), dtype=np.float32)
        # Longest first: similar lengths share a batch, so short texts don't pay for padding to
        # a long one; and the first batch is the largest, so the memory arena grows only once.
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        batch_size = self._settings.encoder_batch_size
        for b in range(0, len(order), batch_size):
            if checkpoint is not None:
                checkpoint()
            members = order[b : b + batch_size]
            width = max(len(sequences[i]) for i in members) + 2
            input_ids = np.full((len(members), width), self._pad_id, dtype=np.int64)
            attention_mask = np.zeros((len(members), width), dtype=np.int64)
            for row, i in enumerate(members):
                n = len(sequences[i])
                input_ids[row, 0] = self._cls_id
                input_ids[row, 1 : n + 1] = sequences[i]
                input_ids[row, n + 1] = self._sep_id
                # Right padding only: the fused Attention derives sequence lengths from the mask.
                attention_mask[row, : n + 2] = 1
            feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
            (vectors,) = self._session.run(None, {k: feeds[k] for k in self._input_names})
            out[members] = vectors
        return out


def _export_in_subprocess(folder: Path) -> None:
    # torch + sentence-transformers take ~0.5 GB that a long-running service could never give
    # back; exporting in a child process keeps them out of the caller (the serving path).
    code = (
        "import logging, sys; from pathlib import Path; "
        "from embeddings.export import export_encoder; "
        "logging.basicConfig(level=logging.INFO); "
        "export_encoder(Path(sys.argv[1]), if_missing=True)"
    )
    log.info("no encoder at %s: exporting it (takes ~15 s, once)", folder)
    proc = subprocess.run(
        [sys.executable, "-c", code, str(folder)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"exporting the encoder to {folder} failed; run `ranker export-encoder --out {folder}` "
            f"to see why. Last output:\n{proc.stderr[-3000:]}"
        )


def load_encoder(path: Path | None = None, settings: EncoderSettings | None = None) -> OnnxEncoder:
    """The exported encoder at `path`, or the embedded default's (exported on first use)."""
    settings = settings if settings is not None else EncoderSettings()
    if path is None:
        path = settings.resolved_encoder_dir
        if not is_valid_export(path):
            _export_in_subprocess(path)
    return OnnxEncoder(Path(path), settings)
