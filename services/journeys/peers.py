"""The journeys service's reads of audience, tagging and tasks over gRPC (`references.Catalog`, and
the report's coupon figures), acting for a tenant with that tenant's token. One channel per peer
for the process."""

from __future__ import annotations

from memberops.audience.v1 import audience_service_pb2, audience_service_pb2_grpc
from memberops.tagging.v1 import tagging_service_pb2, tagging_service_pb2_grpc, tags_pb2
from memberops.tasks.v1 import coupons_pb2, tasks_service_pb2, tasks_service_pb2_grpc

from runtime.channels import peer_channel
from runtime.config import Settings

# A peer's answer read as every service reads one: NOT_FOUND (or an id that could never name
# anything) is None, no answer is UNAVAILABLE, anything else our fault (INTERNAL).
from runtime.peer_calls import answer as _answer
from services.journeys.references import AudienceInfo, CouponTemplateInfo, DimensionInfo, SampleMember
from workflows.journeys import coupons
from workflows.journeys.report_coupons import CouponCount

CALL_TIMEOUT_SECONDS = 5.0


class Peers:
    def __init__(self, settings: Settings) -> None:
        self._token_for_tenant = settings.token_for_tenant
        self._tagging_channel = peer_channel(settings.tagging_address)
        self._audience_channel = peer_channel(settings.audience_address)
        self._tagging = tagging_service_pb2_grpc.TaggingServiceStub(self._tagging_channel)
        self._audience = audience_service_pb2_grpc.AudienceServiceStub(self._audience_channel)
        self._tasks_channel = peer_channel(settings.tasks_address)
        self._tasks = tasks_service_pb2_grpc.TasksServiceStub(self._tasks_channel)

    async def close(self) -> None:
        await self._tagging_channel.close()
        await self._audience_channel.close()
        await self._tasks_channel.close()

    def _auth(self, tenant_id: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self._token_for_tenant(tenant_id)}"),)

    async def audience(self, tenant_id: str, audience_id: str) -> AudienceInfo | None:
        request = audience_service_pb2.GetAudienceRequest(name=f"audiences/{audience_id}")
        call = self._audience.GetAudience(
            request, metadata=self._auth(tenant_id), timeout=CALL_TIMEOUT_SECONDS
        )
        found = await _answer("audience", call)
        return None if found is None else AudienceInfo(dynamic=found.dynamic)

    async def snapshot_exists(self, tenant_id: str, snapshot_id: str) -> bool:
        request = audience_service_pb2.GetSnapshotRequest(name=f"snapshots/{snapshot_id}")
        call = self._audience.GetSnapshot(
            request, metadata=self._auth(tenant_id), timeout=CALL_TIMEOUT_SECONDS
        )
        return await _answer("audience", call) is not None

    async def coupon_template(self, tenant_id: str, template_id: str) -> CouponTemplateInfo | None:
        request = tasks_service_pb2.GetCouponTemplateRequest(name=f"couponTemplates/{template_id}")
        call = self._tasks.GetCouponTemplate(
            request, metadata=self._auth(tenant_id), timeout=CALL_TIMEOUT_SECONDS
        )
        found = await _answer("tasks", call)
        if found is None:
            return None
        return CouponTemplateInfo(retired=found.state == coupons_pb2.COUPON_TEMPLATE_STATE_RETIRED)

    async def coupon_stats(self, tenant_id: str, journey_key: str) -> dict[str, CouponCount]:
        """The journey's coupons per source arm (Unavailable or PeerFailed when tasks fails)."""
        request = tasks_service_pb2.GetCouponStatsRequest(campaign=coupons.campaign(journey_key))
        call = self._tasks.GetCouponStats(
            request, metadata=self._auth(tenant_id), timeout=CALL_TIMEOUT_SECONDS
        )
        found = await _answer("tasks", call)
        arms = found.arms if found is not None else ()
        return {arm.arm: CouponCount(issued=arm.issued, used=arm.used) for arm in arms}

    async def dimension(self, tenant_id: str, dimension: str) -> DimensionInfo | None:
        request = tagging_service_pb2.GetTagDefinitionRequest(name=f"tagDefinitions/{dimension}")
        call = self._tagging.GetTagDefinition(
            request, metadata=self._auth(tenant_id), timeout=CALL_TIMEOUT_SECONDS
        )
        found = await _answer("tagging", call)
        if found is None:
            return None
        return DimensionInfo(
            kind=tags_pb2.TagKind.Name(found.kind).removeprefix("TAG_KIND_").lower(),
            active=found.state == tags_pb2.TAG_DEFINITION_STATE_ACTIVE,
            values=tuple(value.value for value in found.values),
        )

    async def member(self, tenant_id: str, member_id: str) -> SampleMember | None:
        auth = self._auth(tenant_id)
        name = f"members/{member_id}"
        member = await _answer(
            "tagging",
            self._tagging.GetMember(
                tagging_service_pb2.GetMemberRequest(name=name), metadata=auth, timeout=CALL_TIMEOUT_SECONDS
            ),
        )
        if member is None:
            return None
        held = await _answer(
            "tagging",
            self._tagging.GetMemberTags(
                tagging_service_pb2.GetMemberTagsRequest(member=name),
                metadata=auth,
                timeout=CALL_TIMEOUT_SECONDS,
            ),
        )
        tags: dict[str, list[str]] = {}
        for tag in held.tags if held is not None else ():
            tags.setdefault(tag.dimension, []).append(tag.value)
        profile = member.profile
        fields = {
            "nickname": profile.nickname,
            "city": profile.city,
            "level": profile.level,
            "member_id": member.member_id,
        }
        return SampleMember(fields=fields, tags=tags)
