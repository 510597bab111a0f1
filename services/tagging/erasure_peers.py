"""EraseMemberData on the services that keep a member's data beside tagging (tasks, journeys,
audience), called by EraseMember acting for the tenant with that tenant's token. One channel per
peer for the process, opened at the first erasure."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from memberops.audience.v1 import audience_service_pb2, audience_service_pb2_grpc
from memberops.journeys.v1 import journeys_service_pb2, journeys_service_pb2_grpc
from memberops.tasks.v1 import tasks_service_pb2, tasks_service_pb2_grpc

from runtime.channels import peer_channel
from runtime.config import Settings
from runtime.errors import Unavailable
from runtime.peer_calls import bearer, failure

# Journeys stops the member's running journeys (Temporal calls), so its answer may take a while.
CALL_TIMEOUT_SECONDS = 30.0

# peer -> (stub class, request class) of its EraseMemberData.
_PEERS: dict[str, tuple[Callable[[grpc.aio.Channel], Any], Callable[..., Any]]] = {
    "tasks": (tasks_service_pb2_grpc.TasksServiceStub, tasks_service_pb2.EraseMemberDataRequest),
    "journeys": (journeys_service_pb2_grpc.JourneyServiceStub, journeys_service_pb2.EraseMemberDataRequest),
    "audience": (audience_service_pb2_grpc.AudienceServiceStub, audience_service_pb2.EraseMemberDataRequest),
}
PEERS = tuple(_PEERS)


def addresses(settings: Settings) -> Callable[[str], str]:
    """Each peer's address from the settings (MEMBEROPS_<PEER>_ADDRESS)."""
    known = {
        "tasks": settings.tasks_address,
        "journeys": settings.journeys_address,
        "audience": settings.audience_address,
    }
    return lambda peer: known[peer]


class ErasurePeers:
    """Implements `erasure.PeerEraser` over the peers' gRPC APIs.

    `address_of` is asked at the first call, not at start-up: the peers call tagging too, so a
    process that starts them all (the tests) knows their addresses only after tagging runs; an
    empty address means the peer is not running (UNAVAILABLE)."""

    def __init__(self, token_for_tenant: Callable[[str], str], address_of: Callable[[str], str]) -> None:
        self._token_for_tenant = token_for_tenant
        self._address_of = address_of
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()

    async def erase(self, tenant_id: str, member_id: str, pseudonym: str) -> dict[str, int]:
        """Rows changed per "peer.table"; raises the first failure once every peer has answered
        (each peer is idempotent, so the erasure's retry calls them all again)."""
        results = await asyncio.gather(
            *(self._erase(peer, tenant_id, member_id, pseudonym) for peer in PEERS), return_exceptions=True
        )
        changed: dict[str, int] = {}
        for peer, result in zip(PEERS, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            changed.update({f"{peer}.{table}": rows for table, rows in result.items()})
        return changed

    async def _erase(self, peer: str, tenant_id: str, member_id: str, pseudonym: str) -> Mapping[str, int]:
        stub_class, request_class = _PEERS[peer]
        call = stub_class(self._channel(peer)).EraseMemberData(
            request_class(member_id=member_id, pseudonym=pseudonym),
            metadata=bearer(self._token_for_tenant(tenant_id)),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        try:
            reply = await call
        except grpc.aio.AioRpcError as error:
            raise failure(peer, error) from error
        return dict(reply.changed_rows)

    def _channel(self, peer: str) -> grpc.aio.Channel:
        channel = self._channels.get(peer)
        if channel is None:
            address = self._address_of(peer)
            if not address:
                raise Unavailable(f"{peer} has no address: it is not running")
            channel = self._channels[peer] = peer_channel(address)
        return channel
