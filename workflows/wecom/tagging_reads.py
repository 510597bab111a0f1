"""What the WeCom sync reads of tagging over gRPC, as the tenant: the pushed dimensions' definitions
(display names), the feed, members' WeCom identities and their current tags."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from memberops.tagging.v1 import feed_pb2, tagging_service_pb2

from workflows import service_calls
from workflows.wecom.library import Dimension

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub

TIMEOUT = service_calls.CALL_TIMEOUT_SECONDS


class TaggingFailed(Exception):
    """Tagging did not answer as asked (the round is retried; the text is noted as its last error)."""


@dataclass(frozen=True)
class Identity:
    """A member as WeCom knows them: the external contact and the staff member who owns them."""

    member_id: str
    external_userid: str
    staff_userid: str
    revision: int

    @property
    def reachable(self) -> bool:
        return bool(self.external_userid and self.staff_userid)


class TaggingReads:
    def __init__(self, stub: TaggingServiceAsyncStub, token_for_tenant: service_calls.TokenForTenant) -> None:
        self._stub = stub
        self._token_for_tenant = token_for_tenant

    def _auth(self, tenant_id: str) -> tuple[tuple[str, str], ...]:
        return service_calls.metadata(self._token_for_tenant, tenant_id)

    async def dimensions(self, tenant_id: str, names: Sequence[str]) -> list[Dimension]:
        """The dimensions as defined now; one no longer defined is left out (nothing is pushed)."""
        found = []
        for name in names:
            request = tagging_service_pb2.GetTagDefinitionRequest(name=f"tagDefinitions/{name}")
            try:
                definition = await self._stub.GetTagDefinition(
                    request, metadata=self._auth(tenant_id), timeout=TIMEOUT
                )
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    continue
                raise TaggingFailed(f"tagging GetTagDefinition: {error.code().name}") from error
            values = {v.value: v.display_name for v in definition.values}
            found.append(Dimension(name, definition.display_name, values))
        return found

    async def feed_end(self, tenant_id: str) -> str:
        reply = await self._call("ReadFeed", tenant_id, tagging_service_pb2.ReadFeedRequest(skip_to_end=True))
        cursor: str = reply.next_cursor
        return cursor

    async def read_feed(
        self, tenant_id: str, after: str, limit: int, kinds: Sequence[int]
    ) -> tagging_service_pb2.ReadFeedResponse:
        request = tagging_service_pb2.ReadFeedRequest(
            after_cursor=after,
            limit=limit,
            kinds=list(kinds),  # type: ignore[arg-type]
        )
        reply: tagging_service_pb2.ReadFeedResponse = await self._call("ReadFeed", tenant_id, request)
        return reply

    async def identities(self, tenant_id: str, member_ids: Sequence[str]) -> dict[str, Identity]:
        """The members that exist, by id."""
        if not member_ids:
            return {}
        request = tagging_service_pb2.BatchGetMembersRequest(
            names=[f"members/{m}" for m in member_ids], allow_missing=True
        )
        reply = await self._call("BatchGetMembers", tenant_id, request)
        return {
            m.member_id: Identity(
                m.member_id, m.contact.wecom_external_userid, m.contact.wecom_staff_userid, m.revision
            )
            for m in reply.members
        }

    async def held(
        self, tenant_id: str, member_ids: Sequence[str], dimensions: Sequence[str]
    ) -> dict[str, dict[str, set[str]]]:
        """member -> dimension -> the values the member holds now (of `dimensions` only)."""
        held: dict[str, dict[str, set[str]]] = {m: {d: set() for d in dimensions} for m in member_ids}
        if not member_ids or not dimensions:
            return held
        request = tagging_service_pb2.BatchGetMemberTagsRequest(
            members=[f"members/{m}" for m in member_ids], dimensions=list(dimensions)
        )
        reply = await self._call("BatchGetMemberTags", tenant_id, request)
        for tag in reply.tags:
            held.setdefault(tag.member_id, {d: set() for d in dimensions}).setdefault(
                tag.dimension, set()
            ).add(tag.value)
        return held

    async def _call(self, method: str, tenant_id: str, request: Any) -> Any:
        try:
            return await getattr(self._stub, method)(request, metadata=self._auth(tenant_id), timeout=TIMEOUT)
        except grpc.aio.AioRpcError as error:
            # Retried whatever the code: a sync that stopped would need an operator to restart it,
            # while tagging answering again (or a token configured) lets it go on by itself.
            raise TaggingFailed(f"tagging {method}: {error.code().name}: {error.details()}") from error


TAG_CHANGED = feed_pb2.FEED_ENTRY_KIND_TAG_CHANGED
MEMBER_CHANGED = feed_pb2.FEED_ENTRY_KIND_MEMBER_CHANGED
