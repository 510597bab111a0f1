"""The console's only way to data: the four services' gRPC stubs, and what a failed call tells the
operator.

Every call carries the operator's tenant token as a bearer token and a deadline. A failed call
becomes a `Problem` (a message key, its fields, and the HTTP status a page with nothing else to
show answers), never an exception a page would turn into a stack trace: a section of a page whose
call failed shows its message while the other sections render.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import google.rpc.error_details_pb2 as error_details_pb2
import grpc
from aiohttp import web
from grpc_status import rpc_status
from memberops.audience.v1 import audience_service_pb2_grpc
from memberops.journeys.v1 import journeys_service_pb2_grpc
from memberops.tagging.v1 import tagging_service_pb2_grpc
from memberops.tasks.v1 import tasks_service_pb2_grpc

from runtime.channels import peer_channel
from runtime.config import Settings

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub
    from memberops.journeys.v1.journeys_service_pb2_grpc import JourneyServiceAsyncStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub

T = TypeVar("T")
CALL_TIMEOUT_SECONDS = 5.0

# The HTTP status of a page whose main call failed with this code.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


@dataclass(frozen=True)
class Problem:
    """What the operator is told about a failed call."""

    code: grpc.StatusCode
    service: str
    method: str
    # The service's own message, and the field violations of an INVALID_ARGUMENT.
    detail: str = ""
    violations: tuple[tuple[str, str], ...] = ()

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 502)

    @property
    def message_key(self) -> str:
        return {
            grpc.StatusCode.UNIMPLEMENTED: "error.unimplemented",
            grpc.StatusCode.UNAVAILABLE: "error.unavailable",
            grpc.StatusCode.INVALID_ARGUMENT: "error.invalid",
            grpc.StatusCode.DEADLINE_EXCEEDED: "error.deadline",
            grpc.StatusCode.FAILED_PRECONDITION: "error.precondition",
            grpc.StatusCode.NOT_FOUND: "error.not_found",
            grpc.StatusCode.UNAUTHENTICATED: "signin.expired",
        }.get(self.code, "error.other")

    @property
    def shows_detail(self) -> bool:
        """Whether the service's own message helps the operator (it names what was wrong)."""
        return self.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNIMPLEMENTED)


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """A call's reply, or the problem it met."""

    value: T | None = None
    problem: Problem | None = None

    @property
    def reply(self) -> T:
        """The reply, once the caller has seen there is no problem."""
        assert self.value is not None, self.problem
        return self.value


class SignedOut(Exception):
    """The services no longer accept the operator's token: the page sends them to sign in."""


def problem_of(error: grpc.aio.AioRpcError, service: str, method: str) -> Problem:
    violations: tuple[tuple[str, str], ...] = ()
    status = rpc_status.from_call(error)  # type: ignore[arg-type]  # an aio call error carries the trailers
    if status is not None:
        for detail in status.details:
            bad = error_details_pb2.BadRequest()
            if detail.Is(bad.DESCRIPTOR):
                detail.Unpack(bad)
                violations += tuple((v.field, v.description) for v in bad.field_violations)
    return Problem(error.code(), service, method, error.details() or "", violations)


@dataclass
class Peers:
    """One channel per service for the process, opened on start and closed on shutdown."""

    tagging_address: str
    tasks_address: str
    journeys_address: str
    audience_address: str = Settings.audience_address
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    @classmethod
    def from_settings(cls, settings: Settings) -> Peers:
        return cls(
            settings.tagging_address,
            settings.tasks_address,
            settings.journeys_address,
            settings.audience_address,
        )

    def open(self) -> None:
        addresses = (self.tagging_address, self.tasks_address, self.journeys_address, self.audience_address)
        self._channels = [peer_channel(a) for a in addresses]
        tagging, tasks, journeys, audience = self._channels
        self.tagging: TaggingServiceAsyncStub = tagging_service_pb2_grpc.TaggingServiceStub(tagging)
        self.tasks: TasksServiceAsyncStub = tasks_service_pb2_grpc.TasksServiceStub(tasks)
        self.journeys: JourneyServiceAsyncStub = journeys_service_pb2_grpc.JourneyServiceStub(journeys)
        self.audience: AudienceServiceAsyncStub = audience_service_pb2_grpc.AudienceServiceStub(audience)

    async def connect(self, seconds: float = CALL_TIMEOUT_SECONDS) -> None:
        """Connects every channel now (if its service answers within `seconds`), so the first page
        does not pay for the connections; a service that is down is left to the calls to report."""

        async def ready(channel: grpc.aio.Channel) -> None:
            with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError):
                await asyncio.wait_for(channel.channel_ready(), seconds)

        await asyncio.gather(*(ready(channel) for channel in self._channels))

    async def close(self) -> None:
        await asyncio.gather(*(channel.close() for channel in self._channels))
        self._channels = []


@dataclass(frozen=True)
class Caller:
    """Calls for one operator: their token on every call, failures as Problems."""

    peers: Peers
    token: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    async def attempt(self, service: str, method: str, request: object) -> Outcome[Any]:
        """The reply of `service`'s `method` to `request`, or its Problem; a refused token raises
        SignedOut (the whole page then asks to sign in again)."""
        call = getattr(getattr(self.peers, service), method)
        try:
            reply = await call(request, metadata=self.metadata, timeout=CALL_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise SignedOut from error
            return Outcome(problem=problem_of(error, service, method))
        return Outcome(value=reply)


# The application's Peers.
PEERS: web.AppKey[Peers] = web.AppKey("peers", Peers)
# Where the sign-in middleware (console/app.py) puts the request's Caller.
CALLER: web.RequestKey[Caller] = web.RequestKey("caller", Caller)


def caller(request: web.Request) -> Caller:
    return request[CALLER]
