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
