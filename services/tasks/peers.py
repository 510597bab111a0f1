"""The tasks service's calls to tagging and audience over gRPC, acting for a tenant with that
tenant's token (`Settings.token_for_tenant`). One channel per peer for the process.

Members are never deleted in tagging, so a member seen once is remembered (a bounded set per
process): a member call pays for GetMember only the first time this process sees the member.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import field_mask_pb2
from memberops.audience.v1 import audience_service_pb2, audience_service_pb2_grpc
from memberops.tagging.v1 import member_pb2, tagging_service_pb2, tagging_service_pb2_grpc

from runtime.channels import peer_channel
from runtime.config import Settings
from runtime.peer_calls import ABSENT, PeerFailed, answer, failure
from runtime.tagging_feed import read_entry
from services.tasks.feed.source import FACT_KINDS, FeedEntry
from services.tasks.tasks.definitions import ProfileField

CALL_TIMEOUT_SECONDS = 5.0
KNOWN_MEMBERS = 100_000
# Freezing a large audience takes seconds (a retry finds the snapshot by its request id).
SNAPSHOT_TIMEOUT_SECONDS = 60.0


def fields_of(member: member_pb2.Member) -> frozenset[ProfileField]:
    """The profile fields a member has filled in."""
    profile, contact = member.profile, member.contact
    present = {
        ProfileField.GENDER: profile.gender != 0,
        ProfileField.BIRTHDAY: profile.HasField("birthday"),
        ProfileField.CITY: bool(profile.city),
        ProfileField.NICKNAME: bool(profile.nickname),
        ProfileField.PHONE: bool(contact.phone),
        ProfileField.EMAIL: bool(contact.email),
    }
    return frozenset(name for name, filled in present.items() if filled)


class Peers:
    """Implements `tasks.participation.Directory`, `feed.source.FeedSource`, `levels.publisher.LevelWriter`
    and `coupons.issuing.TagReader` over the peers' gRPC APIs."""

    def __init__(self, settings: Settings) -> None:
        self._token_for_tenant = settings.token_for_tenant
        self._tagging_channel = peer_channel(settings.tagging_address)
        self._audience_channel = peer_channel(settings.audience_address)
        self._tagging = tagging_service_pb2_grpc.TaggingServiceStub(self._tagging_channel)
        self._audience = audience_service_pb2_grpc.AudienceServiceStub(self._audience_channel)
        self._known: OrderedDict[tuple[str, str], None] = OrderedDict()

    async def close(self) -> None:
        await self._tagging_channel.close()
        await self._audience_channel.close()

    def _auth(self, tenant_id: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self._token_for_tenant(tenant_id)}"),)

    async def _member(self, tenant_id: str, member_id: str) -> member_pb2.Member | None:
        request = tagging_service_pb2.GetMemberRequest(name=f"members/{member_id}")
        call = self._tagging.GetMember(request, metadata=self._auth(tenant_id), timeout=CALL_TIMEOUT_SECONDS)
        member = await answer("tagging", call)
        if member is not None:
            self._remember(tenant_id, member_id)
        return member

    def _remember(self, tenant_id: str, member_id: str) -> None:
        self._known[(tenant_id, member_id)] = None
        self._known.move_to_end((tenant_id, member_id))
        if len(self._known) > KNOWN_MEMBERS:
            self._known.popitem(last=False)

    def forget(self, tenant_id: str, member_id: str) -> None:
        """An erased member is no longer known to exist (`Erasures`' hook)."""
        self._known.pop((tenant_id, member_id), None)

    async def member_exists(self, tenant_id: str, member_id: str) -> bool:
        if (tenant_id, member_id) in self._known:
            return True
        return await self._member(tenant_id, member_id) is not None

    async def profile_fields(self, tenant_id: str, member_id: str) -> frozenset[ProfileField] | None:
        member = await self._member(tenant_id, member_id)
        return None if member is None else fields_of(member)

    async def set_level(self, tenant_id: str, member_id: str, level: str) -> bool:
        member = member_pb2.Member(member_id=member_id, profile=member_pb2.Profile(level=level))
        request = tagging_service_pb2.UpdateMemberRequest(
            member=member, update_mask=field_mask_pb2.FieldMask(paths=["profile.level"])
        )
        call = self._tagging.UpdateMember(
            request, metadata=self._auth(tenant_id), timeout=CALL_TIMEOUT_SECONDS
        )
        return await answer("tagging", call) is not None

    async def audience_exists(self, tenant_id: str, audience_id: str) -> bool:
        request = audience_service_pb2.GetAudienceRequest(name=f"audiences/{audience_id}")
        call = self._audience.GetAudience(
            request, metadata=self._auth(tenant_id), timeout=CALL_TIMEOUT_SECONDS
        )
        return await answer("audience", call) is not None

    async def in_audience(self, tenant_id: str, audience_id: str, member_id: str) -> bool | None:
        request = audience_service_pb2.CheckMembershipRequest(
            audience=f"audiences/{audience_id}", member=f"members/{member_id}"
        )
        call = self._audience.CheckMembership(
            request, metadata=self._auth(tenant_id), timeout=CALL_TIMEOUT_SECONDS
        )
        try:
            reply = await call
        except grpc.aio.AioRpcError as error:
            if error.code() not in ABSENT:
                raise failure("audience", error) from error
            # NOT_FOUND names the member, or the audience (deleted since the task was defined:
            # then nobody is in it); INVALID_ARGUMENT, an id audience refuses, names no member
            # (the audience id is one a definition checked).
            named = f"members/{member_id}" in (error.details() or "")
            return False if error.code() == grpc.StatusCode.NOT_FOUND and not named else None
        self._remember(tenant_id, member_id)
        return reply.is_member

    async def member_tags(self, tenant_id: str, dimension: str, member_ids: Sequence[str]) -> dict[str, str]:
        """Each member's current value of `dimension` (`coupons.issuing.TagReader`: a coupon's
        threshold by the member's tag); members without one, or unknown, are left out."""
        request = tagging_service_pb2.BatchGetMemberTagsRequest(
            members=[f"members/{m}" for m in member_ids], dimensions=[dimension]
        )
        call = self._tagging.BatchGetMemberTags(
            request, metadata=self._auth(tenant_id), timeout=CALL_TIMEOUT_SECONDS
        )
        reply = await answer("tagging", call)
        if reply is None:
            return {}
        return {t.member_id: t.value for t in reply.tags if t.dimension == dimension}

    async def birthday_months(self, tenant_id: str, member_ids: Sequence[str]) -> dict[str, int]:
        """Each member's birthday month (`economy.level_benefits.Birthdays`), read from tagging in
        one call (at most 10,000 members); members without a birthday, or unknown, are left out."""
        request = tagging_service_pb2.BatchGetMembersRequest(
            names=[f"members/{m}" for m in member_ids],
            allow_missing=True,
            read_mask=field_mask_pb2.FieldMask(paths=["profile.birthday"]),
        )
        call = self._tagging.BatchGetMembers(
            request, metadata=self._auth(tenant_id), timeout=CALL_TIMEOUT_SECONDS
        )
        reply = await answer("tagging", call)
        if reply is None:
            raise PeerFailed("tagging refused to read members' birthdays")
        return {
            m.member_id: m.profile.birthday.month for m in reply.members if m.profile.HasField("birthday")
        }

    async def read_feed(self, tenant_id: str, after_cursor: str, limit: int) -> tuple[list[FeedEntry], str]:
        kinds: Any = FACT_KINDS
        request = tagging_service_pb2.ReadFeedRequest(after_cursor=after_cursor, limit=limit, kinds=kinds)
        call = self._tagging.ReadFeed(request, metadata=self._auth(tenant_id), timeout=CALL_TIMEOUT_SECONDS)
        reply = await answer("tagging", call)
        if reply is None:
            raise PeerFailed(f"tagging refused to read its feed after {after_cursor!r}")
        entries = [read_entry(entry) for entry in reply.entries]
        return entries, reply.next_cursor

    async def create_snapshot(
        self, tenant_id: str, audience_id: str, request_id: str
    ) -> tuple[str, int] | None:
        """A snapshot of the audience (`issuances.Snapshots`): its id and size; None when the
        audience does not exist. Idempotent by `request_id`."""
        request = audience_service_pb2.CreateSnapshotRequest(
            audience=f"audiences/{audience_id}", request_id=request_id
        )
        call = self._audience.CreateSnapshot(
            request, metadata=self._auth(tenant_id), timeout=SNAPSHOT_TIMEOUT_SECONDS
        )
        snapshot = await answer("audience", call)
        if snapshot is None:
            return None
        return snapshot.name.removeprefix("snapshots/"), snapshot.member_count

    async def snapshot_page(
        self, tenant_id: str, snapshot_id: str, page_token: str, size: int
    ) -> tuple[list[str], str] | None:
        """One page of a snapshot's member ids and the next page's token; None when the token
        (or the snapshot) names no page."""
        request = audience_service_pb2.ListSnapshotMembersRequest(
            parent=f"snapshots/{snapshot_id}", page_size=size, page_token=page_token
        )
        call = self._audience.ListSnapshotMembers(
            request, metadata=self._auth(tenant_id), timeout=CALL_TIMEOUT_SECONDS
        )
        reply = await answer("audience", call)
        if reply is None:
            return None
        return list(reply.member_ids), reply.next_page_token
