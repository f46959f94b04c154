"""Candidates and postings to stored rows: the encoder protocol and per-item encoding."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import numpy as np

from ranker.domain import Candidate, Posting
from ranker.errors import InvalidInput
from ranker.prepared import candidate_text, posting_text
from ranker.rows import CandidateRow, PostingRow


class DocumentVectors(Protocol):
    """What the encoder returns per document (see `embeddings.DocumentEmbedding`)."""

    @property
    def vector(self) -> np.ndarray: ...

    @property
    def chunks(self) -> np.ndarray: ...


class TextEncoder(Protocol):
    """The part of `embeddings.OnnxEncoder` the service uses; tests may pass a stand-in."""

    @property
    def dim(self) -> int: ...

    def encode(self, texts: list[str]) -> np.ndarray: ...

    def encode_documents(self, texts: list[str]) -> Sequence[DocumentVectors]: ...


T = TypeVar("T")
R = TypeVar("R")


def _one_by_one(
    items: Sequence[T], encode_batch: Callable[[list[T]], list[R]]
) -> list[R | InvalidInput]:
    """Encode a batch; if the encoder refuses it, retry item by item to name the bad ones."""
    try:
        return list(encode_batch(list(items)))
    except ValueError:
        pass
    out: list[R | InvalidInput] = []
    for item in items:
        try:
            out.append(encode_batch([item])[0])
        except ValueError as e:
            # E.g. a text made only of zero-width or control characters: the caller's data,
            # so it is that item's INVALID_ARGUMENT, never the batch's INTERNAL.
            out.append(InvalidInput(f"the encoder could not read this text: {e}"))
    return out


def encode_candidates(
    encoder: TextEncoder, candidates: Sequence[Candidate]
) -> list[CandidateRow | InvalidInput]:
    """One stored row per candidate (document and chunk vectors), or why it could not be encoded."""

    def batch(cs: list[Candidate]) -> list[CandidateRow]:
        docs = encoder.encode_documents([candidate_text(c) for c in cs])
        return [
            CandidateRow(candidate=c, doc_vector=d.vector, chunk_vectors=d.chunks)
            for c, d in zip(cs, docs, strict=True)
        ]

    return _one_by_one(candidates, batch)


def encode_postings(
    encoder: TextEncoder, postings: Sequence[Posting]
) -> list[PostingRow | InvalidInput]:
    """One stored row per posting (the vector of `posting_text`), or why it could not be encoded."""

    def batch(ps: list[Posting]) -> list[PostingRow]:
        vectors = encoder.encode([posting_text(p) for p in ps])
        return [PostingRow(posting=p, vector=v) for p, v in zip(ps, vectors, strict=True)]

    return _one_by_one(postings, batch)
