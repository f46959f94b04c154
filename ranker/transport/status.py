"""The one table from domain errors to gRPC status codes."""

from __future__ import annotations

import grpc

from ranker.errors import (
    Cancelled,
    DeadlineExceeded,
    ErasedId,
    InvalidInput,
    ModelRejected,
    NotFound,
    NotReady,
    Overloaded,
    PermissionDenied,
    RankerError,
    StorageFull,
    StorageUnavailable,
    Unauthenticated,
)

# The first matching class wins; a domain error missing here is INTERNAL.
STATUS_BY_ERROR: tuple[tuple[type[RankerError], grpc.StatusCode], ...] = (
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (NotReady, grpc.StatusCode.UNAVAILABLE),
    (Cancelled, grpc.StatusCode.CANCELLED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ModelRejected, grpc.StatusCode.FAILED_PRECONDITION),
    (ErasedId, grpc.StatusCode.FAILED_PRECONDITION),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StorageFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StorageUnavailable, grpc.StatusCode.UNAVAILABLE),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
)


def status_for(error: BaseException) -> grpc.StatusCode:
    """The status code of a domain error; anything unexpected is INTERNAL."""
    for cls, code in STATUS_BY_ERROR:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL
