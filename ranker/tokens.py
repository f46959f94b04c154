"""Bearer tokens: named and scoped, kept hashed in an owner-only file, managed by `ranker tokens`.

A token's secret is 32 random bytes from `secrets` (256 bits), printed once when it is created;
the file keeps only its SHA-256. A slow password hash (scrypt, argon2) exists to make guessing a
low-entropy password expensive; a 256-bit random secret cannot be guessed either way, and a
plain hash keeps the check that runs on every RPC at a microsecond instead of ~50 ms.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from filelock import FileLock

from ranker.atomic import write_text_atomic
from ranker.errors import InvalidInput
from ranker.permissions import PRIVATE_FILE, private_dir

log = logging.getLogger(__name__)

TOKEN_PREFIX = "rnk_"
"""Marks a ranker token, so secret scanners and people recognise one in a log or a paste."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Scope(StrEnum):
    """What a token may do; each RPC needs one (`ranker.transport.access.RPC_SCOPES`)."""

    READ = "read"
    """GetCandidate, ListPostings, GetModelInfo."""
    RANK = "rank"
    """RankCandidates."""
    WRITE = "write"
    """UpsertCandidates, UpsertPostings, RecordOutcomes."""
    ERASE = "erase"
    """DeleteCandidates."""
    ADMIN = "admin"
    """Everything."""


def parse_scopes(values: Iterable[str]) -> frozenset[Scope]:
    """Scopes from their names (comma-separated or repeated), or InvalidInput naming the choices."""
    out: set[Scope] = set()
    for value in values:
        for part in value.split(","):
            name = part.strip().lower()
            if not name:
                continue
            try:
                out.add(Scope(name))
            except ValueError:
                allowed = ", ".join(s.value for s in Scope)
                raise InvalidInput(f"unknown scope {part!r}; choose from {allowed}") from None
    if not out:
        raise InvalidInput("give at least one scope (--scope read, rank, write, erase or admin)")
    return frozenset(out)


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Token:
    """A token as stored: its name, scopes and the digest of its secret (never the secret)."""

    name: str
    scopes: frozenset[Scope]
    created_at: datetime
    digest: str

    def allows(self, scope: Scope) -> bool:
        return Scope.ADMIN in self.scopes or scope in self.scopes

    @property
    def scope_names(self) -> str:
        return ",".join(sorted(s.value for s in self.scopes))


class TokenFile:
    """The tokens in `<data_dir>/tokens.json` (0600, replaced atomically); thread-safe.

    The server re-reads the file when it changes, so `ranker tokens revoke` takes effect on
    the next call without a restart.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._mutex = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._by_digest: dict[str, Token] = {}

    # -- reading --------------------------------------------------------------------------
    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read(self) -> list[Token]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            return [
                Token(
                    name=str(t["name"]),
                    scopes=parse_scopes(t["scopes"]),
                    created_at=datetime.fromisoformat(t["created_at"]),
                    digest=str(t["sha256"]),
                )
                for t in raw["tokens"]
            ]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InvalidInput(
                f"{self.path} is not a token file ({e}); restore it, or delete it and create "
                "the tokens again with `ranker tokens create`"
            ) from e

    def _current(self) -> dict[str, Token]:
        with self._mutex:
            seen = self._stat()
            if seen != self._seen:
                try:
                    tokens = self._read()
                except InvalidInput:
                    if self._seen is None:
                        raise
                    # Keep serving with the tokens last read rather than locking everyone out.
                    log.exception("could not re-read %s; keeping the tokens read before", self.path)
                    return self._by_digest
                self._by_digest = {t.digest: t for t in tokens}
                self._seen = seen
            return self._by_digest

    def tokens(self) -> list[Token]:
        """Every token, by name."""
        return sorted(self._current().values(), key=lambda t: t.name)

    def verify(self, secret: str) -> Token | None:
        """The token whose secret this is, or None.

        A lookup by digest: comparing digests of a 256-bit secret leaks nothing useful through
        timing (finding a matching digest prefix needs a preimage of SHA-256).
        """
        return self._current().get(secret_digest(secret))

    # -- changing -------------------------------------------------------------------------
    def _write(self, tokens: list[Token]) -> None:
        plain = {
            "version": 1,
            "tokens": [
                {
                    "name": t.name,
                    "scopes": sorted(s.value for s in t.scopes),
                    "created_at": t.created_at.isoformat(),
                    "sha256": t.digest,
                }
                for t in sorted(tokens, key=lambda t: t.name)
            ],
        }
        write_text_atomic(self.path, json.dumps(plain, indent=2) + "\n")

    def _locked(self) -> FileLock:
        private_dir(self.path.parent)
        # Two `ranker tokens` commands at once must not both read, add, and write back.
        return FileLock(
            self.path.with_name(self.path.name + ".lock"), mode=PRIVATE_FILE, thread_local=False
        )

    def create(self, name: str, scopes: Iterable[Scope]) -> tuple[Token, str]:
        """A new token and its secret (shown once: only its digest is kept)."""
        if not _NAME.match(name):
            raise InvalidInput(
                f"token name {name[:70]!r} is not allowed; use 1-64 letters, digits, '.', '_' "
                "or '-', starting with a letter or digit"
            )
        wanted = frozenset(scopes)
        if not wanted:
            raise InvalidInput(
                "give at least one scope (--scope read, rank, write, erase or admin)"
            )
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._locked():
            tokens = self._read()
            if any(t.name == name for t in tokens):
                raise InvalidInput(
                    f"a token named {name!r} exists; revoke it first (`ranker tokens revoke "
                    f"{name}`) or choose another name"
                )
            token = Token(name, wanted, datetime.now(UTC), secret_digest(secret))
            self._write([*tokens, token])
        return token, secret

    def revoke(self, name: str) -> bool:
        """Remove the token named `name`; False when there is none."""
        with self._locked():
            tokens = self._read()
            kept = [t for t in tokens if t.name != name]
            if len(kept) == len(tokens):
                return False
            self._write(kept)
        return True
