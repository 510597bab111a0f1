"""The one mapping from domain errors to gRPC status codes and `google.rpc` error details."""

from __future__ import annotations

import asyncpg
import google.rpc.code_pb2 as code_pb2
import google.rpc.error_details_pb2 as error_details_pb2
import google.rpc.status_pb2 as status_pb2
import grpc
from google.protobuf import any_pb2
from grpc_status import rpc_status

from runtime import errors

_CODES: tuple[tuple[type[errors.DomainError], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Aborted, grpc.StatusCode.ABORTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
)


def transient(error: Exception) -> errors.Aborted | None:
    """What a caller is told of a transient conflict the database settled by rolling a transaction
    back (a deadlock, a serialization failure: SQLSTATE class 40): ABORTED, which says retry,
    never an internal error. None for any other error."""
    if isinstance(error, asyncpg.TransactionRollbackError):
        return errors.Aborted(
            "a concurrent request conflicted with this one and its transaction was rolled back; retry"
        )
    return None


def code_for(error: errors.DomainError) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.UNKNOWN


# Status trailers must stay under gRPC's default 8 KiB metadata limit, or the client sees
# RESOURCE_EXHAUSTED instead of the error (1,000 bad events would otherwise overflow it).
MAX_MESSAGE = 1024
MAX_VIOLATION_BYTES = 4096


def to_status(error: errors.DomainError) -> grpc.Status:
    """A grpc.Status whose trailers carry a `google.rpc.Status`, with BadRequest for bad input."""
    code = code_for(error)
    message = error.message if len(error.message) <= MAX_MESSAGE else error.message[: MAX_MESSAGE - 1] + "…"
    status = status_pb2.Status(code=code.value[0], message=message)
    if isinstance(error, errors.InvalidArgument):
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=_bounded(error.violations)))
        status.details.append(detail)
    return rpc_status.to_status(status)


def _bounded(
    violations: tuple[errors.FieldViolation, ...],
) -> list[error_details_pb2.BadRequest.FieldViolation]:
    """The violations that fit the trailer budget, then one saying how many were left out."""
    shown: list[error_details_pb2.BadRequest.FieldViolation] = []
    size = 0
    for v in violations:
        size += len(v.field) + len(v.description) + 8
        if size > MAX_VIOLATION_BYTES:
            left = len(violations) - len(shown)
            shown.append(
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=f"{left} more violations not listed"
                )
            )
            break
        shown.append(error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description))
    return shown


def internal_status(message: str = "internal error") -> grpc.Status:
    return rpc_status.to_status(status_pb2.Status(code=code_pb2.INTERNAL, message=message))
