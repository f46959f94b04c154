"""The upserts' one skeleton (candidates and postings): check, screen, encode, then store and
apply to memory under the write mutex, with per-item results."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, TypeVar

from ranker.api import BatchResult, Deadline, ItemResult, Rejected, split_batch
from ranker.config import Settings
from ranker.domain import Candidate, Posting
from ranker.errors import InvalidInput, RankerError
from ranker.rows import CandidateRow, PostingRow


class _Identified(Protocol):
    """A prepared candidate or posting: what the upserts' skeleton needs of it."""

    @property
    def id(self) -> str: ...


_Item = TypeVar("_Item", Candidate, Posting)
_Row = TypeVar("_Row", CandidateRow, PostingRow)
_Prepared = TypeVar("_Prepared", bound=_Identified)


class UpsertContext(NamedTuple):
    """What an upsert needs of the pipeline: its limits, write mutex and candidate count."""

    settings: Settings
    write_mutex: threading.Lock
    total: Callable[[], int]


def upsert_batch(
    items: Sequence[_Item | Rejected],
    what: str,
    encode: Callable[[list[_Item]], list[_Row | InvalidInput]],
    prepare: Callable[[_Row], _Prepared],
    commit: Callable[[list[tuple[_Row, _Prepared]]], list[bool]],
    deadline: Deadline,
    context: UpsertContext,
    screen: Callable[[list[str]], dict[str, RankerError]] | None = None,
) -> BatchResult:
    """Check, encode, then store and apply to memory.

    `commit` writes the store, then memory under the write lock, and says which items were
    new; it runs under the write mutex so the store and memory change in the same order.
    `screen` refuses ids per item (erased candidates): before encoding, and again under
    the write mutex (an erasure may have run meanwhile).
    """
    s = context.settings
    results, good = split_batch(
        items, what, max_items=s.max_batch_items, max_text_chars=s.max_text_chars
    )
    if screen is not None and good:
        refused = screen([item.id for _, item in good])
        for i, item in good:
            if item.id in refused:
                results[i] = ItemResult(i, item.id, refused[item.id])
        good = [(i, item) for i, item in good if item.id not in refused]
    # Waiting for an encoder thread may have used the budget up: do not start encoding.
    deadline.check(f"encoding the {what}")
    encoded = encode([item for _, item in good]) if good else []
    rows: list[tuple[int, _Row, _Prepared]] = []
    for (i, item), row in zip(good, encoded, strict=True):
        if isinstance(row, InvalidInput):
            results[i] = ItemResult(i, item.id, row)
            continue
        rows.append((i, row, prepare(row)))
    # Past this point the write happens; a caller that has given up gets nothing stored.
    deadline.check(f"storing the {what}")
    with context.write_mutex:
        if screen is not None and rows:
            late = screen([prepared.id for _, _, prepared in rows])
            for i, _, prepared in rows:
                if prepared.id in late:
                    results[i] = ItemResult(i, prepared.id, late[prepared.id])
            rows = [r for r in rows if r[2].id not in late]
        if rows:
            created = commit([(row, prepared) for _, row, prepared in rows])
            for (i, _, prepared), new in zip(rows, created, strict=True):
                results[i] = ItemResult(i, prepared.id, created=new)
        total = context.total()
    return BatchResult(items=tuple(r for r in results if r is not None), total_candidates=total)
