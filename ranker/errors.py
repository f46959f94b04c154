"""Domain errors; they carry no transport codes (the gRPC layer maps them in one table)."""

from __future__ import annotations


class RankerError(Exception):
    """Base of every error the domain raises on purpose."""


class InvalidInput(RankerError, ValueError):
    """The caller sent something malformed; the message says what to fix."""


class NotFound(RankerError, LookupError):
    """A referenced id (posting, candidate, model version) does not exist."""


class NotReady(RankerError):
    """The service cannot answer yet (index or model not loaded); try again later."""


class ModelRejected(RankerError):
    """A model version failed its checks (feature names, parity, a test prediction)."""


class DeadlineExceeded(RankerError):
    """The caller's deadline passed before the work finished; retry with a longer deadline."""
