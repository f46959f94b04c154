"""Domain errors; they carry no transport codes (the gRPC layer maps them in one table)."""

from __future__ import annotations


class RankerError(Exception):
    """Base of every error the domain raises on purpose."""


class InvalidInput(RankerError, ValueError):
    """The caller sent something malformed; the message says what to fix."""


class InvalidField(InvalidInput):
    """One field of a record is bad: `field` names it, `problem` says what to send instead.

    Readers of files prefix the file and line (`candidates.csv line 3, field skills: ...`); the
    record alone reads `candidate 'C1' skills: ...`.
    """

    def __init__(self, subject: str, field: str, problem: str) -> None:
        self.subject = subject
        self.field = field
        self.problem = problem
        super().__init__(f"{subject} {field}: {problem}" if subject else f"{field}: {problem}")


class NotFound(RankerError, LookupError):
    """A referenced id (posting, candidate, model version) does not exist."""


class NotReady(RankerError):
    """The service cannot answer yet (index or model not loaded); try again later."""


class ModelRejected(RankerError):
    """A model version failed its checks (feature names, parity, a test prediction)."""


class DeadlineExceeded(RankerError):
    """The caller's deadline passed before the work finished; retry with a longer deadline."""


class Cancelled(DeadlineExceeded):
    """The caller gave up (cancelled the call or went away) before the work finished."""


class Overloaded(RankerError):
    """The service refuses new work of this kind now (encoder busy, request over its budget);
    the message says whether to retry later or to send less."""


class StorageFull(RankerError):
    """The disk under the store (or another data file) is full; free space, then retry."""


class StorageUnavailable(RankerError):
    """A data file could not be written (I/O error, read-only disk) or the decision log is
    failing under the strict policy; retry later, the message says what failed."""


class ErasedId(RankerError):
    """The id was erased; it can be stored again only after an explicit re-consent
    (`ranker reconsent ID --reason ...`)."""


class Unauthenticated(RankerError):
    """The call carries no bearer token, or one the service does not know."""


class PermissionDenied(RankerError):
    """The call's token lacks the scope the method needs; the message names both."""


def shown_id(value: str, limit: int = 40) -> str:
    """An id as error messages quote it: repr, cut to `limit` characters with its full length.

    Error messages travel in gRPC trailing metadata; repeating a 16 KB id there would turn a
    NOT_FOUND into RESOURCE_EXHAUSTED (metadata too large).
    """
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"
