"""Candidates and postings to stored rows: the encoder protocol and per-item encoding."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np

from ranker.api import Deadline
from ranker.domain import Candidate, Posting
from ranker.errors import DeadlineExceeded, InvalidInput
from ranker.metrics import ServiceMetrics
from ranker.prepared import candidate_text, posting_text
from ranker.rows import CandidateRow, PostingRow


class DocumentVectors(Protocol):
    """What the encoder returns per document (see `embeddings.DocumentEmbedding`)."""

    @property
    def vector(self) -> np.ndarray: ...

    @property
    def chunks(self) -> np.ndarray: ...


class TextEncoder(Protocol):
    """The part of `embeddings.OnnxEncoder` the service uses; tests may pass a stand-in.

    An encoder whose `encode` / `encode_documents` also take `checkpoint` (as OnnxEncoder
    does) is given one: it calls it between its batches, and it raises when the caller has
    given up. Others are checked between the sub-batches of `SUB_BATCH_CHARS`.
    """

    @property
    def dim(self) -> int: ...

    def encode(self, texts: list[str]) -> np.ndarray: ...

    def encode_documents(self, texts: list[str]) -> Sequence[DocumentVectors]: ...


T = TypeVar("T")
R = TypeVar("R")

Checkpoint = Callable[[], None]
"""Called between batches of encoding; raises (DeadlineExceeded, Cancelled) to stop it."""

SUB_BATCH_CHARS = 20_000
"""Text encoded between two checkpoints when the encoder cannot check by itself (~1 s)."""

SUB_BATCH_ITEMS = 64


def stop_when(deadline: Deadline, metrics: ServiceMetrics | None = None) -> Checkpoint:
    """The checkpoint of a call: raises once its deadline passes or its caller gives up, and
    counts the stop (`ranker_encode_stopped`), so an abandoned call stops using the CPU."""

    def check() -> None:
        try:
            deadline.check("encoding the rest")
        except DeadlineExceeded:
            if metrics is not None:
                metrics.encode_stopped.inc()
            raise

    return check


@functools.cache
def _takes_checkpoint(kind: Any) -> bool:
    try:
        return "checkpoint" in inspect.signature(kind.encode_documents).parameters
    except (AttributeError, TypeError, ValueError):
        return False


def _call(encoder: TextEncoder, name: str, texts: list[str], checkpoint: Checkpoint | None) -> Any:
    method = getattr(encoder, name)
    if checkpoint is not None and _takes_checkpoint(type(encoder)):
        return method(texts, checkpoint=checkpoint)
    return method(texts)


def _sub_batches(items: Sequence[T], size: Callable[[T], int]) -> list[list[T]]:
    """`items` in order, cut so each part holds about SUB_BATCH_CHARS of text."""
    parts: list[list[T]] = []
    part: list[T] = []
    chars = 0
    for item in items:
        if part and (chars + size(item) > SUB_BATCH_CHARS or len(part) >= SUB_BATCH_ITEMS):
            parts.append(part)
            part, chars = [], 0
        part.append(item)
        chars += size(item)
    if part:
        parts.append(part)
    return parts


def _checked(
    items: Sequence[T],
    size: Callable[[T], int],
    encode_batch: Callable[[list[T]], list[R]],
    checkpoint: Checkpoint | None,
) -> list[R | InvalidInput]:
    """`_one_by_one` per sub-batch, with the checkpoint before each (when there is one)."""
    if checkpoint is None:
        return _one_by_one(items, encode_batch)
    out: list[R | InvalidInput] = []
    for part in _sub_batches(items, size):
        checkpoint()
        done: list[R | InvalidInput] = _one_by_one(part, encode_batch)
        out.extend(done)
    return out


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
    encoder: TextEncoder,
    candidates: Sequence[Candidate],
    checkpoint: Checkpoint | None = None,
) -> list[CandidateRow | InvalidInput]:
    """One stored row per candidate (document and chunk vectors), or why it could not be encoded.

    With `checkpoint`, the work stops (its exception propagates) soon after it raises.
    """

    def batch(cs: list[Candidate]) -> list[CandidateRow]:
        texts = [candidate_text(c) for c in cs]
        docs = _call(encoder, "encode_documents", texts, checkpoint)
        return [
            CandidateRow(candidate=c, doc_vector=d.vector, chunk_vectors=d.chunks)
            for c, d in zip(cs, docs, strict=True)
        ]

    return _checked(candidates, lambda c: len(c.cv_text), batch, checkpoint)


def encode_postings(
    encoder: TextEncoder,
    postings: Sequence[Posting],
    checkpoint: Checkpoint | None = None,
) -> list[PostingRow | InvalidInput]:
    """One stored row per posting (the vector of `posting_text`), or why it could not be encoded."""

    def batch(ps: list[Posting]) -> list[PostingRow]:
        vectors = _call(encoder, "encode", [posting_text(p) for p in ps], checkpoint)
        return [PostingRow(posting=p, vector=v) for p, v in zip(ps, vectors, strict=True)]

    return _checked(postings, lambda p: len(p.description) + len(p.title), batch, checkpoint)
