"""The store interface every caller depends on (`Store`), and the one place that opens a store
from the settings: SQLite (the embedded default) or PostgreSQL (`RANKER_DATABASE_URL`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from ranker.config import Settings
from ranker.domain import Outcome
from ranker.rows import (
    CandidateRow,
    CandidateVersion,
    Change,
    Decision,
    ErasureReceipt,
    PostingRow,
    ShadowRanking,
)
from ranker.store_sql import BeforeCommit

if TYPE_CHECKING:
    from ranker.decision_reader import DecisionReader


class Store(Protocol):
    """The source of truth: what the pipeline, ingest, training, the CLI and the decision log
    use. `ranker.store.SqliteStore` and `ranker.store_pg.PostgresStore` implement it with the
    same schema and the same erasure guarantees (`tests/ranker/test_store_shared.py` runs one
    suite against both). Every write is one transaction; an erased id is refused by every write
    path until `reconsent`; every candidate, posting, outcome or erasure write adds entries to
    the change feed (`changes_since`) in its own transaction."""

    dim: int

    @property
    def uuid(self) -> str: ...

    def generation(self) -> str: ...

    def close(self) -> None: ...

    # candidates
    def upsert_candidates(
        self, rows: Sequence[CandidateRow], before_commit: BeforeCommit | None = None
    ) -> list[int]: ...

    def candidate_versions(self, ids: Sequence[str] | None = None) -> list[CandidateVersion]: ...

    def get_candidates(self, ids: Sequence[str]) -> list[CandidateRow]: ...

    def get_candidates_by_faiss_ids(
        self, fids: Sequence[int]
    ) -> list[tuple[int, CandidateRow]]: ...

    def iter_candidates(self, batch: int = 1000) -> Iterator[CandidateRow]: ...

    def iter_candidates_with_ids(self, batch: int = 1000) -> Iterator[tuple[int, CandidateRow]]: ...

    def count_candidates(self) -> int: ...

    def faiss_ids(self, candidate_ids: Sequence[str]) -> dict[str, int]: ...

    # postings
    def upsert_postings(
        self, rows: Sequence[PostingRow], before_commit: BeforeCommit | None = None
    ) -> None: ...

    def list_postings(self) -> list[PostingRow]: ...

    def get_postings(self, ids: Sequence[str]) -> list[PostingRow]: ...

    def count_postings(self) -> int: ...

    # outcomes and protected attributes
    def record_outcomes(
        self, outcomes: Sequence[Outcome], before_commit: BeforeCommit | None = None
    ) -> int: ...

    def list_outcomes(self) -> list[Outcome]: ...

    def count_outcomes(self) -> int: ...

    def upsert_protected(self, rows: Sequence[tuple[str, str, str]]) -> None: ...

    def protected_attributes(self, name: str) -> dict[str, str]: ...

    # decision log and shadow scoring
    def log_decisions(self, decisions: Sequence[Decision]) -> None: ...

    def get_decision(self, request_id: str) -> Decision: ...

    def has_decisions(self, request_ids: Sequence[str]) -> set[str]: ...

    def count_decisions(self) -> int: ...

    def log_shadow(self, records: Sequence[ShadowRanking]) -> None: ...

    def shadow_rankings(self, challenger_version: str | None = None) -> list[ShadowRanking]: ...

    def probe_write(self, size: int = 65_536) -> None: ...

    # erasure
    def delete_candidates(self, ids: Sequence[str], actor: str = "anonymous") -> ErasureReceipt: ...

    def erasure_receipts(self, candidate_id: str) -> list[dict[str, object]]: ...

    def erased_among(self, ids: Sequence[str]) -> set[str]: ...

    def reconsent(self, candidate_id: str, reason: str, actor: str) -> bool: ...

    def admin_actions(self) -> list[dict[str, object]]: ...

    @property
    def residue_pending(self) -> bool: ...

    def clear_residue(self, budget_seconds: float = 0.0) -> bool: ...

    # change feed
    def changes_since(self, seq: int, limit: int = 1000) -> list[Change]: ...

    def last_change_seq(self, kind: str | None = None) -> int: ...

    def prune_changes(self, older_than: datetime) -> int: ...

    def changes_pruned_through(self) -> int: ...

    def take_own_changes(self) -> tuple[int, int] | None: ...


def describe_store(settings: Settings) -> str:
    """Where the store is, for messages (a PostgreSQL URL without its password)."""
    if not settings.uses_postgres:
        return str(settings.resolved_db_path)
    from ranker.store_pg import safe_url

    return safe_url(settings.database_url)


def open_store(settings: Settings, dim: int = 384) -> Store:
    """The store the settings name: PostgreSQL when `database_url` is set, else the SQLite file.

    Created (tables and all) when it does not exist yet.
    """
    if settings.uses_postgres:
        from ranker.store_pg import PostgresStore

        return PostgresStore(
            settings.database_url,
            dim=dim,
            receipt_key_file=settings.resolved_receipt_key_file,
            checkpoint_seconds=settings.erasure_checkpoint_seconds,
            pool_size=settings.database_pool_size,
            vacuum=settings.postgres_erasure_vacuum,
        )
    from ranker.store import SqliteStore

    return SqliteStore(
        settings.resolved_db_path,
        dim=dim,
        checkpoint_seconds=settings.erasure_checkpoint_seconds,
        receipt_key_file=settings.resolved_receipt_key_file,
    )


class ChangeWaiter(Protocol):
    """Wakes a follower when writes commit (`ranker.store_pg.ChangeListener`)."""

    def wait(self, timeout: float) -> int | None: ...

    def close(self) -> None: ...


def open_change_waiter(settings: Settings) -> ChangeWaiter | None:
    """What wakes a replica when another service writes: PostgreSQL's LISTEN on the change
    feed's channel; None for SQLite (one process: no other service writes)."""
    if not settings.uses_postgres:
        return None
    from ranker.store_pg import ChangeListener

    return ChangeListener(settings.database_url)


def store_exists(settings: Settings) -> bool:
    """Whether the store the settings name holds a store already (read-only commands check
    before opening, which would create one)."""
    if not settings.uses_postgres:
        return settings.resolved_db_path.is_file()
    from ranker.store_pg import has_store

    return has_store(settings.database_url)


def open_decision_reader(settings: Settings) -> DecisionReader:
    """A read-only reader of the store's decision log (safe beside a running service)."""
    if settings.uses_postgres:
        from ranker.store_pg import PostgresDecisionReader

        return PostgresDecisionReader(settings.database_url)
    from ranker.decision_reader import SqliteDecisionReader

    return SqliteDecisionReader(settings.resolved_db_path)
