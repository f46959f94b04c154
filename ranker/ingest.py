"""Offline ingestion (`ranker ingest`): data files into the store, then the index rebuilt."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from embeddings.files import sha256_file
from ranker.atomic import write_text_atomic
from ranker.config import Settings
from ranker.domain import Candidate, Outcome, Posting
from ranker.encoding import TextEncoder, encode_candidates, encode_postings
from ranker.errors import InvalidInput
from ranker.index import IvfOptions, index_from_store
from ranker.rows import CandidateRow, PostingRow
from ranker.store_api import Store, open_store, store_exists

if TYPE_CHECKING:
    from ranker.datafiles import FileProblems

INGEST_BATCH = 256
"""Candidates encoded and stored per transaction when ingesting files (and per Dask task)."""


R = TypeVar("R")


@dataclass(frozen=True)
class Batch:
    """Candidates still to encode from one stretch of the file, in file order."""

    candidates: list[Candidate]
    done: int
    """Candidates of the file up to the end of this batch (the progress once it is stored)."""


class BatchEncoder(ABC):
    """Encodes an ingest's batches: here, one after the other (`LocalBatches`), or on Dask
    workers (`ranker.dask_ingest.DaskBatches`). Either way the rows come back in the order the
    batches went in, and `ingest_files` stores them the same way."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Dimension of the vectors: the store's."""

    @abstractmethod
    def candidates(
        self, batches: Iterable[Batch]
    ) -> Iterator[tuple[Batch, list[CandidateRow | InvalidInput]]]:
        """Each batch with its rows (or why an item could not be encoded), in order."""

    @abstractmethod
    def postings(self, postings: Sequence[Posting]) -> list[PostingRow | InvalidInput]:
        """One row per posting (or why it could not be encoded), in order."""


class LocalBatches(BatchEncoder):
    """Encoding in this process, with the encoder given."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder = encoder

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def candidates(
        self, batches: Iterable[Batch]
    ) -> Iterator[tuple[Batch, list[CandidateRow | InvalidInput]]]:
        for batch in batches:
            yield batch, encode_candidates(self.encoder, batch.candidates)

    def postings(self, postings: Sequence[Posting]) -> list[PostingRow | InvalidInput]:
        return encode_postings(self.encoder, postings)


@dataclass
class _Skipped:
    """Candidates of the file that need no encoding, counted as the batches are made."""

    erased: list[str] = field(default_factory=list)
    unchanged: int = 0


def _batches_to_encode(
    store: Store, cands: Sequence[Candidate], resuming: bool, size: int, skipped: _Skipped
) -> Iterator[Batch]:
    """The file's candidates in batches of `size`, less the erased and (when resuming) those
    already stored as in the file."""
    for start in range(0, len(cands), size):
        part = list(cands[start : start + size])
        # An erased candidate stays erased: the export still listing it is no consent.
        gone = store.erased_among([c.id for c in part])
        if gone:
            skipped.erased += [c.id for c in part if c.id in gone]
            part = [c for c in part if c.id not in gone]
        if resuming:
            stored = {
                r.candidate.id: r.candidate for r in store.get_candidates([c.id for c in part])
            }
            todo = [c for c in part if stored.get(c.id) != c]
            skipped.unchanged += len(part) - len(todo)
            part = todo
        yield Batch(part, min(start + size, len(cands)))


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
    erased: tuple[str, ...] = ()
    """Candidates skipped because they were erased (and not re-consented since)."""
    erased_outcomes: int = 0
    """Outcomes skipped because their candidate was erased."""
    erased_protected: int = 0
    """Protected attributes skipped because their candidate was erased."""


@dataclass(frozen=True)
class CheckedFiles:
    """The data files, parsed and validated completely: what an ingest would store."""

    candidates: list[Candidate]
    postings: list[Posting]
    outcomes: list[Outcome]
    protected: dict[str, dict[str, str]]


def check_files(files: Mapping[str, Path | None]) -> CheckedFiles:
    """Parse and validate every given file before anything is written (`ranker ingest --check`).

    Raises `DataFilesInvalid` listing every problem across all files (up to a cap, then a
    count), each with its file, line and field, so one run finds them all.
    """
    from ranker import datafiles

    problems = datafiles.FileProblems()
    parsed = CheckedFiles(
        candidates=_read(files.get("candidates"), datafiles.read_candidates, problems, []),
        postings=_read(files.get("postings"), datafiles.read_postings, problems, []),
        outcomes=_read(files.get("outcomes"), datafiles.read_outcomes, problems, []),
        protected=_read(files.get("protected"), datafiles.read_protected, problems, {}),
    )
    if problems:
        raise problems.error()
    return parsed


def _read(
    path: Path | None,
    reader: Callable[[Path, FileProblems], R],
    problems: FileProblems,
    empty: R,
) -> R:
    return empty if path is None else reader(path, problems)


def ingest_files(
    settings: Settings,
    encoder: TextEncoder | BatchEncoder,
    *,
    candidates: Path | None = None,
    postings: Path | None = None,
    outcomes: Path | None = None,
    protected: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    batch_size: int | None = None,
) -> IngestReport:
    """Read data files into the store and rebuild the index (the offline path of `ranker ingest`).

    Writes many transactions; the state file next to the store says "complete" only after the
    last one and the index save. A run interrupted before that is resumed by the next run on
    the same files: candidates already stored exactly as in the file are not encoded again,
    and every write is an idempotent upsert. Run it while the service is stopped: a running
    service keeps its own in-memory view and learns of new candidates only through
    UpsertCandidates (`ranker ingest` and `ranker serve` lock the data folder).

    `encoder`: a text encoder (encoding here), or a `BatchEncoder` such as
    `ranker.dask_ingest.DaskBatches` (encoding on Dask workers); the checks, the resume, the
    store writes and the index are the same either way. `batch_size`: candidates per
    transaction (and per Dask task); default `INGEST_BATCH`.
    """
    files = {
        "candidates": candidates,
        "postings": postings,
        "outcomes": outcomes,
        "protected": protected,
    }
    stage = on_stage if on_stage is not None else (lambda _: None)
    # Every file is read and checked before the store is opened: an error in the last file
    # must not be found after the first was encoded and stored.
    stage("checking files")
    checked = check_files(files)
    sources = source_digests(files)
    state_path = ingest_state_path(settings)
    batches = encoder if isinstance(encoder, BatchEncoder) else LocalBatches(encoder)
    store = open_store(settings, dim=batches.dim)
    try:
        # A new database (deleted and recreated) has a new uuid: an old state file does not count.
        store_uuid = store.uuid
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
        n_cand = n_post = n_out = n_prot = 0
        skip_out = skip_prot = 0
        skipped = _Skipped()
        if candidates is not None:
            stage("encoding candidates")
            cands = checked.candidates
            size = batch_size or INGEST_BATCH
            todo = _batches_to_encode(store, cands, resuming, size, skipped)
            # Rows are stored batch by batch in file order as they come back, so an interrupted
            # run leaves a prefix of the file stored, which the next run skips.
            for batch, results in batches.candidates(todo):
                rows = _accepted("candidate", batch.candidates, results, rejected)
                if rows:
                    store.upsert_candidates(rows)
                n_cand += len(rows)
                if progress is not None:
                    progress(batch.done, len(cands))
        if postings is not None:
            stage("encoding postings")
            posts = checked.postings
            prows = _accepted("posting", posts, batches.postings(posts), rejected)
            store.upsert_postings(prows)
            n_post = len(prows)
        if outcomes is not None:
            stage("storing outcomes")
            events = checked.outcomes
            gone = store.erased_among([o.candidate_id for o in events])
            kept = [o for o in events if o.candidate_id not in gone]
            skip_out = len(events) - len(kept)
            n_out = store.record_outcomes(kept)
        if protected is not None:
            attrs_by_id = checked.protected
            gone = store.erased_among(list(attrs_by_id))
            triples = [
                (cid, name, value)
                for cid, attrs in attrs_by_id.items()
                for name, value in attrs.items()
                if cid not in gone
            ]
            skip_prot = sum(len(a) for cid, a in attrs_by_id.items() if cid in gone)
            store.upsert_protected(triples)
            n_prot = len(triples)
        stage("building the index")
        # With the service's IVF options: past `index_ivf_min_candidates` the service then
        # starts on lists, not on an exact scan until its background training ends.
        index, _ = index_from_store(
            store,
            settings.resolved_index_dir,
            storage=settings.index_storage,
            ivf=IvfOptions.from_settings(settings),
        )
        report = IngestReport(
            candidates=n_cand,
            postings=n_post,
            outcomes=n_out,
            protected=n_prot,
            rejected=tuple(rejected),
            index_size=len(index),
            unchanged=skipped.unchanged,
            erased=tuple(skipped.erased),
            erased_outcomes=skip_out,
            erased_protected=skip_prot,
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
    if not store_exists(settings):
        return False
    state = _read_state(ingest_state_path(settings))
    if state is None or state.get("state") != "complete":
        return False
    store = open_store(settings)
    try:
        same_store = state.get("store_uuid") == store.uuid
    finally:
        store.close()
    return same_store and state.get("sources") == source_digests(files)
