"""What the store's SQL runs on, for both engines: the connection and cursor it needs, and stored times read back."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Protocol


class Cursor(Protocol):
    """What the store reads off a statement: sqlite3's and psycopg's cursors alike."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Sql(Protocol):
    """A connection taking the store's SQL with `?` placeholders: a `sqlite3.Connection`, or
    `ranker.store_pg.PgSql` around a psycopg connection. `executemany`'s rowcount is the sum
    over its parameter sets."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Cursor: ...


def as_time(value: datetime | str) -> datetime:
    """A stored time as a datetime: SQLite keeps ISO text, PostgreSQL a TIMESTAMPTZ."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def as_iso(value: datetime | str) -> str:
    """A stored time as ISO text (as SQLite keeps it)."""
    return value.isoformat() if isinstance(value, datetime) else value


def as_utc(t: datetime) -> datetime:
    """A time in UTC; a naive one is taken to be UTC already."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
