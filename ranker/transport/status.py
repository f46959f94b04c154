"""The one table from domain errors to gRPC status codes, and the structured error details."""

from __future__ import annotations

import grpc

from ranker.errors import (
    Cancelled,
    DeadlineExceeded,
    ErasedId,
    InvalidField,
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


def error_details(error: BaseException, code: grpc.StatusCode, message: str) -> bytes | None:
    """A serialized `google.rpc.Status` carrying a `google.rpc.BadRequest` for INVALID_ARGUMENT
    (the trailer `grpc-status-details-bin`, read by `grpc_status.rpc_status.from_call` and its
    equivalents in other languages); None for other codes.

    One field violation: the field when the error names one (`InvalidField`), else the request
    as a whole (an empty field), with the same text as the status message.
    """
    if code != grpc.StatusCode.INVALID_ARGUMENT:
        return None
    from google.protobuf import any_pb2
    from google.rpc import error_details_pb2, status_pb2

    field = error.field if isinstance(error, InvalidField) else ""
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
        ]
    )
    detail = any_pb2.Any()
    detail.Pack(bad)
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return bytes(status.SerializeToString())
