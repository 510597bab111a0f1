"""How activities call the services: as the tenant they act for, with the Temporal attempt as the
request id, and with gRPC errors sorted into the ones retrying can fix and the ones it cannot."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from temporalio import activity
from temporalio.exceptions import ApplicationError

from runtime.db import Database

# Codes that retrying cannot fix; anything else (UNAVAILABLE, DEADLINE_EXCEEDED, ...) is retried.
PERMANENT = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)
CALL_TIMEOUT_SECONDS = 5.0

TokenForTenant = Callable[[str], str]

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub


@dataclass(frozen=True)
class Services:
    """The services the activities call, and the token each tenant calls them with: built once by
    the worker for every activity class, so no class lists them one by one."""

    tagging: TaggingServiceAsyncStub
    audience: AudienceServiceAsyncStub
    tasks: TasksServiceAsyncStub
    token_for_tenant: TokenForTenant


class ServiceActivities:
    """The base of an activity class that reads its own schema and calls the services."""

    def __init__(self, db: Database, services: Services) -> None:
        self._db = db
        self._tagging = services.tagging
        self._audience = services.audience
        self._tasks = services.tasks
        self._token_for_tenant = services.token_for_tenant


def metadata(token_for_tenant: TokenForTenant, tenant_id: str) -> tuple[tuple[str, str], ...]:
    info = activity.info()
    return (
        ("authorization", f"Bearer {token_for_tenant(tenant_id)}"),
        ("x-request-id", f"{info.workflow_id}/{info.activity_id}/{info.attempt}"),
    )


def permanent(method: str, error: grpc.aio.AioRpcError) -> ApplicationError | Exception:
    """What to raise for a failed call: a non-retryable ApplicationError for the permanent codes,
    the gRPC error itself (retried by Temporal) for the rest."""
    if error.code() in PERMANENT:
        return ApplicationError(
            f"{method}: {error.code().name}: {error.details()}", type=error.code().name, non_retryable=True
        )
    return error
