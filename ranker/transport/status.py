"""The one table from domain errors to gRPC status codes."""

from __future__ import annotations

import grpc

from ranker.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelRejected,
    NotFound,
    NotReady,
    RankerError,
)

# The first matching class wins; a domain error missing here is INTERNAL.
STATUS_BY_ERROR: tuple[tuple[type[RankerError], grpc.StatusCode], ...] = (
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (NotReady, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ModelRejected, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_for(error: BaseException) -> grpc.StatusCode:
    """The status code of a domain error; anything unexpected is INTERNAL."""
    for cls, code in STATUS_BY_ERROR:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL
