"""The candidates a search found, as the catalog hands them over: packed arrays for the
features, each one's record read from the column file only when it is asked for."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import numpy as np

from ranker.columns import AppendFile
from ranker.domain import Candidate, from_plain
from ranker.prepared import PackedCandidates, PreparedCandidate, Scalar


class RetrievedCandidates(Sequence[PreparedCandidate]):
    """The candidates a search found, packed for the features; one is made an object
    (`PreparedCandidate`, its record read back) only when asked for, e.g. to explain it."""

    def __init__(self, packed: PackedCandidates, records: Sequence[bytes | None]) -> None:
        self.packed = packed
        self.ids = packed.ids
        self._records = records
        s = packed.scalars
        self._vec = np.concatenate([[0], np.cumsum(s[:, Scalar.CHUNKS] + 1)]).astype(np.intp)
        self._terms = np.concatenate([[0], np.cumsum(s[:, Scalar.TERMS])]).astype(np.intp)
        n_tags = s[:, Scalar.SKILLS] + s[:, Scalar.TITLE] + 1
        self._tags = np.concatenate([[0], np.cumsum(n_tags)]).astype(np.intp)

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[PreparedCandidate]:
        return (self._one(i) for i in range(len(self)))

    def __getitem__(self, i: int) -> PreparedCandidate:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self._one(i % len(self))

    def _one(self, i: int) -> PreparedCandidate:
        p = self.packed
        t0, t1 = self._terms[i], self._terms[i + 1]
        return PreparedCandidate(
            candidate=_record(self._records[i], self.ids[i]),
            vectors=p.vectors[self._vec[i] : self._vec[i + 1]],
            term_hashes=p.term_hashes[t0:t1],
            tags=p.tags[self._tags[i] : self._tags[i + 1]],
            numbers=np.concatenate([p.scalars[i], p.term_counts[t0:t1].astype(np.float64)]),
        )


def _record(raw: bytes | None, candidate_id: str) -> Candidate:
    if raw is None or not raw.strip(b"\0"):
        # Erased while the request ran: its bytes are zeros now. The pipeline drops the row
        # before anything is served or logged; this placeholder only lets the request finish.
        return Candidate(id=candidate_id, cv_text="(erased)")
    return from_plain(Candidate, json.loads(raw))


class LazyRecords(Sequence[bytes | None]):
    """The records of some slots, read from the column file when one is asked for."""

    def __init__(self, records: AppendFile, hot: dict[str, np.ndarray], slots: np.ndarray) -> None:
        self._file = records
        self._start = hot["rec_start"][slots].copy()
        self._len = hot["rec_len"][slots].copy()

    def __len__(self) -> int:
        return len(self._start)

    def __getitem__(self, i: int) -> bytes | None:  # type: ignore[override]
        return self._file.read(int(self._start[i]), int(self._len[i]))
