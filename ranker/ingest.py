"""Ingestion: encode candidates and postings, store them, and keep the FAISS index in step."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from embeddings.manifest import sha256_file
from ranker.atomic import write_text_atomic
from ranker.config import Settings
from ranker.domain import Candidate, Posting
from ranker.errors import InvalidInput
from ranker.index import INDEX_FILE, FaissIndex, Storage
from ranker.prepared import candidate_text, posting_text
from ranker.store import CandidateRow, PostingRow, SqliteStore

log = logging.getLogger(__name__)

INGEST_BATCH = 256
"""Candidates encoded and stored per transaction when ingesting files."""


class DocumentVectors(Protocol):
    """What the encoder returns per document (see `embeddings.DocumentEmbedding`)."""

    @property
    def vector(self) -> np.ndarray: ...

    @property
    def chunks(self) -> np.ndarray: ...


class TextEncoder(Protocol):
    """The part of `embeddings.OnnxEncoder` ingestion uses; tests may pass a stand-in."""

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


def build_index(
    faiss_ids: np.ndarray,
    vectors: np.ndarray,
    generation: str,
    dim: int = 384,
    storage: Storage = "fp16",
) -> FaissIndex:
    """A fresh index over the given candidates, tagged with the store generation it reflects."""
    index = FaissIndex(dim=dim, generation=generation, storage=storage)
    if len(faiss_ids):
        index.add(np.asarray(faiss_ids, dtype=np.int64), np.asarray(vectors, dtype=np.float32))
    return index


def load_index_if_current(
    index_dir: Path, generation: str, storage: Storage = "fp16"
) -> FaissIndex | None:
    """The saved index when it reflects `generation` of the store; None when missing or stale."""
    if not (index_dir / INDEX_FILE).exists():
        return None
    try:
        index = FaissIndex.load(index_dir)
    except (OSError, InvalidInput, RuntimeError) as e:
        log.warning(
            "saved index in %s is unreadable (%s); rebuilding it from the store", index_dir, e
        )
        return None
    if index.generation != generation:
        log.info("saved index is out of date (store changed since); rebuilding it from the store")
        return None
    if index.storage != storage:
        log.info(
            "saved index holds %s vectors, %s configured; rebuilding it", index.storage, storage
        )
        return None
    return index


def index_from_store(
    store: SqliteStore,
    index_dir: Path,
    vectors: tuple[np.ndarray, np.ndarray] | None = None,
    storage: Storage = "fp16",
) -> tuple[FaissIndex, bool]:
    """The store's index: the saved one when current, else rebuilt and saved. True if rebuilt.

    The one place that decides between the saved index and a rebuild. `vectors` (FAISS ids,
    document vectors) spares a second pass over the store when the caller has read it already.
    """
    generation = store.generation()
    index = load_index_if_current(index_dir, generation, storage)
    if index is not None and len(index) == store.count_candidates():
        return index, False
    if vectors is None:
        ids: list[int] = []
        rows: list[np.ndarray] = []
        for fid, row in store.iter_candidates_with_ids():
            ids.append(fid)
            rows.append(row.doc_vector)
        vectors = (
            np.asarray(ids, dtype=np.int64),
            np.stack(rows) if rows else np.zeros((0, store.dim), np.float32),
        )
    index = build_index(vectors[0], vectors[1], generation, store.dim, storage)
    index.save(index_dir)
    return index, True


# ---------------------------------------------------------------------------------------------
# The state of `ranker ingest`: a small JSON file next to the store


def ingest_state_path(settings: Settings) -> Path:
    """Where `ranker ingest` records what it ingested and whether it finished."""
    db = settings.resolved_db_path
    return db.with_name(db.name + ".ingest.json")


def _accepted(
    kind: str,
    items: Sequence[Candidate | Posting],
    results: Sequence[R | InvalidInput],
    rejected: list[str],
) -> list[R]:
    """The encoded rows; each item the encoder refused is noted in `rejected` with its reason."""
    rows: list[R] = []
    for item, r in zip(items, results, strict=True):
        if isinstance(r, InvalidInput):
            rejected.append(f"{kind} {item.id!r}: {r}")
        else:
            rows.append(r)
    return rows


def source_digests(files: Mapping[str, Path | None]) -> dict[str, str]:
    """kind -> sha256 of each data file given: what a finished ingest is compared against."""
    return {kind: sha256_file(path) for kind, path in sorted(files.items()) if path is not None}


def _store_uuid(store: SqliteStore) -> str:
    # The generation is "<store uuid>:<counter>": a new database (deleted and recreated) gets a
    # new uuid, so a state file left from the old one does not count.
    return store.generation().split(":", 1)[0]


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _write_state(path: Path, state: Mapping[str, Any]) -> None:
    """Atomically: a crash leaves the old state or the new one."""
    write_text_atomic(path, json.dumps(state, indent=2, sort_keys=True))


@dataclass(frozen=True)
class IngestReport:
    """What `ingest_files` stored."""

    candidates: int
    postings: int
    outcomes: int
    protected: int
    rejected: tuple[str, ...]
    """One line per item that could not be encoded: which and why."""
    index_size: int
    unchanged: int = 0
    """Candidates a resumed ingest found already stored as in the file (not encoded again)."""


def ingest_files(
    settings: Settings,
    encoder: TextEncoder,
    *,
    candidates: Path | None = None,
    postings: Path | None = None,
    outcomes: Path | None = None,
    protected: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> IngestReport:
    """Read data files into the store and rebuild the index (the offline path of `ranker ingest`).

    Writes many transactions; the state file next to the store says "complete" only after the
    last one and the index save. A run interrupted before that is resumed by the next run on
    the same files: candidates already stored exactly as in the file are not encoded again,
    and every write is an idempotent upsert. Run it while the service is stopped: a running
    service keeps its own in-memory view and learns of new candidates only through
    UpsertCandidates (`ranker ingest` and `ranker serve` lock the data folder).
    """
    # Imported here: the data-file readers are needed only by this offline path.
    from ranker import datafiles

    files = {
        "candidates": candidates,
        "postings": postings,
        "outcomes": outcomes,
        "protected": protected,
    }
    sources = source_digests(files)
    state_path = ingest_state_path(settings)
    store = SqliteStore(settings.resolved_db_path, dim=encoder.dim)
    try:
        store_uuid = _store_uuid(store)
        previous = _read_state(state_path)
        resuming = (
            previous is not None
            and previous.get("store_uuid") == store_uuid
            and previous.get("sources") == sources
        )
        _write_state(
            state_path,
            {
                "state": "started",
                "store_uuid": store_uuid,
                "sources": sources,
                "started_at": datetime.now(UTC).isoformat(),
            },
        )
        rejected: list[str] = []
        n_cand = n_post = n_out = n_prot = n_same = 0
        if candidates is not None:
            cands = datafiles.read_candidates(candidates)
            for start in range(0, len(cands), INGEST_BATCH):
                part = cands[start : start + INGEST_BATCH]
                if resuming:
                    stored = {
                        r.candidate.id: r.candidate
                        for r in store.get_candidates([c.id for c in part])
                    }
                    todo = [c for c in part if stored.get(c.id) != c]
                    n_same += len(part) - len(todo)
                    part = todo
                rows = _accepted("candidate", part, encode_candidates(encoder, part), rejected)
                if rows:
                    store.upsert_candidates(rows)
                n_cand += len(rows)
                if progress is not None:
                    progress(min(start + INGEST_BATCH, len(cands)), len(cands))
        if postings is not None:
            posts = datafiles.read_postings(postings)
            prows = _accepted("posting", posts, encode_postings(encoder, posts), rejected)
            store.upsert_postings(prows)
            n_post = len(prows)
        if outcomes is not None:
            n_out = store.record_outcomes(datafiles.read_outcomes(outcomes))
        if protected is not None:
            triples = [
                (cid, name, value)
                for cid, attrs in datafiles.read_protected(protected).items()
                for name, value in attrs.items()
            ]
            store.upsert_protected(triples)
            n_prot = len(triples)
        index, _ = index_from_store(
            store, settings.resolved_index_dir, storage=settings.index_storage
        )
        report = IngestReport(
            candidates=n_cand,
            postings=n_post,
            outcomes=n_out,
            protected=n_prot,
            rejected=tuple(rejected),
            index_size=len(index),
            unchanged=n_same,
        )
        _write_state(
            state_path,
            {
                "state": "complete",
                "store_uuid": store_uuid,
                "sources": sources,
                "completed_at": datetime.now(UTC).isoformat(),
                "candidates": store.count_candidates(),
                "rejected": len(rejected),
            },
        )
        return report
    finally:
        store.close()


def is_ingested(settings: Settings, files: Mapping[str, Path | None]) -> bool:
    """True when an ingest of exactly these files ran to completion into this store.

    What `ranker ingest --if-missing` skips on. A store that merely holds candidates does not
    count: an ingest interrupted halfway leaves some, and must be finished.
    """
    if not settings.resolved_db_path.exists():
        return False
    state = _read_state(ingest_state_path(settings))
    if state is None or state.get("state") != "complete":
        return False
    store = SqliteStore(settings.resolved_db_path)
    try:
        same_store = state.get("store_uuid") == _store_uuid(store)
    finally:
        store.close()
    return same_store and state.get("sources") == source_digests(files)


def ensure_index(settings: Settings) -> tuple[int, bool]:
    """Bring the saved index in line with the store; (index size, whether it was rebuilt)."""
    store = SqliteStore(settings.resolved_db_path)
    try:
        index, rebuilt = index_from_store(
            store, settings.resolved_index_dir, storage=settings.index_storage
        )
        return len(index), rebuilt
    finally:
        store.close()
