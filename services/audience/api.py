"""AudienceService over gRPC: protobuf in, domain calls, protobuf out.

Domain errors propagate to the shared interceptor, which turns them into status codes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any

from google.protobuf import timestamp_pb2
from google.type import date_pb2
from memberops.audience.v1 import audience_pb2, audience_service_pb2, audience_service_pb2_grpc

from runtime.auth import current_tenant
from runtime.erasure import Erasures
from runtime.errors import InvalidArgument
from services.audience import breakdowns, definitions
from services.audience.definitions import Audience, AudienceInput, Definitions
from services.audience.dynamic import Memberships
from services.audience.evaluation import Evaluator, Target, member_id_from_name
from services.audience.exports import DEFAULT_EXPORT_LIMITS, ExportLimits, ExportSlots
from services.audience.snapshots import Snapshot, Snapshots, snapshot_id_from_name
from services.audience.stream_budget import within_idle_budget


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class AudienceApi(audience_service_pb2_grpc.AudienceServiceServicer):
    def __init__(
        self,
        audiences: Definitions,
        evaluator: Evaluator,
        snapshots: Snapshots,
        breakdowns: breakdowns.Breakdowns,
        memberships: Memberships,
        clock: Callable[[], dt.datetime] = utc_now,
        exports: ExportLimits = DEFAULT_EXPORT_LIMITS,
        *,
        erasures: Erasures,
    ) -> None:
        self._erasures = erasures
        self._export_limits = exports
        self._export_slots = ExportSlots(exports.per_tenant)
        self._audiences = audiences
        self._evaluator = evaluator
        self._snapshots = snapshots
        self._breakdowns = breakdowns
        self._memberships = memberships
        self._clock = clock

    async def CreateAudience(
        self, request: audience_service_pb2.CreateAudienceRequest, context: Any
    ) -> audience_pb2.Audience:
        if not request.HasField("audience"):
            raise InvalidArgument.field("audience", "is required")
        created = await self._audiences.create(
            current_tenant(), audience_from_proto(request.audience), request.request_id
        )
        return audience_to_proto(created)

    async def UpdateAudience(
        self, request: audience_service_pb2.UpdateAudienceRequest, context: Any
    ) -> audience_pb2.Audience:
        if not request.HasField("audience"):
            raise InvalidArgument.field("audience", "is required")
        message = request.audience
        if message.name and not message.audience_id:
            message.audience_id = definitions.audience_id_from_name(message.name, "audience.name")
        updated = await self._audiences.update(
            current_tenant(), audience_from_proto(message), request.expected_version
        )
        return audience_to_proto(updated)

    async def GetAudience(
        self, request: audience_service_pb2.GetAudienceRequest, context: Any
    ) -> audience_pb2.Audience:
        audience_id = definitions.audience_id_from_name(request.name, "name")
        return audience_to_proto(await self._audiences.get(current_tenant(), audience_id, request.version))

    async def ListAudiences(
        self, request: audience_service_pb2.ListAudiencesRequest, context: Any
    ) -> audience_service_pb2.ListAudiencesResponse:
        page, token = await self._audiences.list_page(current_tenant(), request.page_size, request.page_token)
        return audience_service_pb2.ListAudiencesResponse(
            audiences=[audience_to_proto(a) for a in page], next_page_token=token
        )

    async def DeleteAudience(
        self, request: audience_service_pb2.DeleteAudienceRequest, context: Any
    ) -> audience_pb2.Audience:
        audience_id = definitions.audience_id_from_name(request.name, "name")
        return audience_to_proto(await self._audiences.delete(current_tenant(), audience_id))

    async def CountAudience(
        self, request: audience_service_pb2.CountAudienceRequest, context: Any
    ) -> audience_service_pb2.CountAudienceResponse:
        target = evaluated(request.name, request.rule if request.HasField("rule") else None)
        count, version = await self._evaluator.count(current_tenant(), target, self._clock())
        return audience_service_pb2.CountAudienceResponse(member_count=count, version=version)

    async def PreviewAudience(
        self, request: audience_service_pb2.PreviewAudienceRequest, context: Any
    ) -> audience_service_pb2.PreviewAudienceResponse:
        audience_id = definitions.audience_id_from_name(request.name, "name")
        sample, version = await self._evaluator.preview(
            current_tenant(), audience_id, request.sample_size, self._clock()
        )
        members = [
            audience_pb2.PreviewMember(
                member_id=item.member_id,
                tags=[audience_pb2.MatchedTag(dimension=d, value=v) for d, v in item.tags],
            )
            for item in sample
        ]
        return audience_service_pb2.PreviewAudienceResponse(members=members, version=version)

    async def ListAudienceMembers(
        self, request: audience_service_pb2.ListAudienceMembersRequest, context: Any
    ) -> audience_service_pb2.ListAudienceMembersResponse:
        audience_id = definitions.audience_id_from_name(request.name, "name")
        page, token, version = await self._evaluator.list_members(
            current_tenant(), audience_id, request.page_size, request.page_token, self._clock()
        )
        return audience_service_pb2.ListAudienceMembersResponse(
            member_ids=page, next_page_token=token, version=version
        )

    async def ExportAudience(
        self, request: audience_service_pb2.ExportAudienceRequest, context: Any
    ) -> AsyncIterator[audience_service_pb2.ExportAudienceResponse]:
        """One of the tenant's export slots for the call's whole life (given back when it ends,
        however it ends), and an end to the stream once a chunk waits too long to be read."""
        audience_id = definitions.audience_id_from_name(request.name, "name")
        tenant_id = current_tenant()
        give_back = self._export_slots.take(tenant_id)
        context.add_done_callback(lambda _: give_back())
        try:
            chunks = self._evaluator.export(tenant_id, audience_id, request.chunk_size, self._clock())
            idle = self._export_limits.idle_seconds
            async for member_ids, version in within_idle_budget(chunks, context, idle, "the export"):
                yield audience_service_pb2.ExportAudienceResponse(member_ids=member_ids, version=version)
        finally:
            give_back()

    async def CheckMembership(
        self, request: audience_service_pb2.CheckMembershipRequest, context: Any
    ) -> audience_service_pb2.CheckMembershipResponse:
        audience_id = definitions.audience_id_from_name(request.audience, "audience")
        member_id = member_id_from_name(request.member, "member")
        is_member, version = await self._evaluator.check(
            current_tenant(), audience_id, member_id, self._clock()
        )
        return audience_service_pb2.CheckMembershipResponse(is_member=is_member, version=version)

    async def BreakdownAudience(
        self, request: audience_service_pb2.BreakdownAudienceRequest, context: Any
    ) -> audience_service_pb2.BreakdownAudienceResponse:
        target = evaluated(request.name, request.rule if request.HasField("rule") else None)
        result = await self._breakdowns.breakdown(
            current_tenant(), target, breakdown_from_proto(request), self._clock()
        )
        return breakdown_to_proto(result)

    async def ReadAudienceFeed(
        self, request: audience_service_pb2.ReadAudienceFeedRequest, context: Any
    ) -> audience_service_pb2.ReadAudienceFeedResponse:
        audience_id = (
            definitions.audience_id_from_name(request.audience, "audience") if request.audience else None
        )
        entries, cursor = await self._memberships.read_feed(
            current_tenant(), request.after_cursor, request.limit, audience_id, request.skip_to_end
        )
        change = audience_service_pb2.AudienceChange
        return audience_service_pb2.ReadAudienceFeedResponse(
            entries=[
                audience_service_pb2.AudienceFeedEntry(
                    cursor=e.cursor,
                    change=change.AUDIENCE_CHANGE_ENTERED if e.entered else change.AUDIENCE_CHANGE_EXITED,
                    audience=f"{definitions.NAME_PREFIX}{e.audience_id}",
                    member_id=e.member_id,
                    version=e.version,
                    create_time=_stamp(e.create_time),
                    occur_time=_stamp(e.occur_time),
                    backfilled=e.backfilled,
                )
                for e in entries
            ],
            next_cursor=cursor,
        )

    async def CreateSnapshot(
        self, request: audience_service_pb2.CreateSnapshotRequest, context: Any
    ) -> audience_pb2.Snapshot:
        audience_id = definitions.audience_id_from_name(request.audience, "audience")
        arms = [(arm.name, arm.share_percent) for arm in request.splits]
        created = await self._snapshots.create(
            current_tenant(), audience_id, arms, request.request_id, self._clock()
        )
        return snapshot_to_proto(created)

    async def GetSnapshot(
        self, request: audience_service_pb2.GetSnapshotRequest, context: Any
    ) -> audience_pb2.Snapshot:
        snapshot_id = snapshot_id_from_name(request.name, "name")
        return snapshot_to_proto(await self._snapshots.get(current_tenant(), snapshot_id))

    async def GetAssignment(
        self, request: audience_service_pb2.GetAssignmentRequest, context: Any
    ) -> audience_service_pb2.GetAssignmentResponse:
        snapshot_id = snapshot_id_from_name(request.snapshot, "snapshot")
        member_id = member_id_from_name(request.member, "member")
        arm = await self._snapshots.assignment(current_tenant(), snapshot_id, member_id)
        return audience_service_pb2.GetAssignmentResponse(in_snapshot=arm is not None, arm=arm or "")

    async def ListSnapshotMembers(
        self, request: audience_service_pb2.ListSnapshotMembersRequest, context: Any
    ) -> audience_service_pb2.ListSnapshotMembersResponse:
        snapshot_id = snapshot_id_from_name(request.parent, "parent")
        page = await self._snapshots.members_page(
            current_tenant(), snapshot_id, request.page_size, request.page_token
        )
        return audience_service_pb2.ListSnapshotMembersResponse(
            member_ids=page.member_ids, arms=page.arms, next_page_token=page.next_page_token
        )

    async def ListSnapshots(
        self, request: audience_service_pb2.ListSnapshotsRequest, context: Any
    ) -> audience_service_pb2.ListSnapshotsResponse:
        audience_id = definitions.audience_id_from_name(request.audience, "audience")
        page, token = await self._snapshots.list_page(
            current_tenant(), audience_id, request.page_size, request.page_token
        )
        return audience_service_pb2.ListSnapshotsResponse(
            snapshots=[snapshot_to_proto(s) for s in page], next_page_token=token
        )

    async def EraseMemberData(
        self, request: audience_service_pb2.EraseMemberDataRequest, context: Any
    ) -> audience_service_pb2.EraseMemberDataResponse:
        changed = await self._erasures.erase(current_tenant(), request.member_id, request.pseudonym)
        return audience_service_pb2.EraseMemberDataResponse(changed_rows=changed)


def snapshot_to_proto(snapshot: Snapshot) -> audience_pb2.Snapshot:
    return audience_pb2.Snapshot(
        name=f"snapshots/{snapshot.snapshot_id}",
        audience=f"{definitions.NAME_PREFIX}{snapshot.audience_id}",
        audience_version=snapshot.audience_version,
        arms=[
            audience_pb2.SplitArm(
                name=arm.name, share_percent=arm.share_percent, member_count=arm.member_count
            )
            for arm in snapshot.arms
        ],
        salt=snapshot.salt,
        member_count=snapshot.member_count,
        request_id=snapshot.request_id,
        create_time=_stamp(snapshot.create_time),
    )


def audience_from_proto(message: audience_pb2.Audience) -> AudienceInput:
    return AudienceInput(
        audience_id=message.audience_id,
        rule=message.rule if message.HasField("rule") else None,
        display_name=message.display_name,
        description=message.description,
        dynamic=message.dynamic,
    )


def _stamp(moment: dt.datetime) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(moment)
    return value


def audience_to_proto(audience: Audience) -> audience_pb2.Audience:
    spec = audience.spec
    message = audience_pb2.Audience(
        name=f"{definitions.NAME_PREFIX}{spec.audience_id}",
        audience_id=spec.audience_id,
        display_name=spec.display_name,
        description=spec.description,
        rule=spec.rule,
        dynamic=spec.dynamic,
        version=audience.version,
        create_time=_stamp(audience.create_time),
        update_time=_stamp(audience.update_time),
    )
    if audience.delete_time is not None:
        message.delete_time.CopyFrom(_stamp(audience.delete_time))
    return message


def evaluated(name: str, rule: audience_pb2.AudienceRule | None) -> Target:
    """A call's saved audience (`name`) or unsaved rule (`rule`): one of the two."""
    if rule is None:
        return definitions.audience_id_from_name(name, "name")
    if name:
        raise InvalidArgument.field("name", "give either name or rule, not both")
    return rule


def breakdown_from_proto(
    request: audience_service_pb2.BreakdownAudienceRequest,
) -> breakdowns.Breakdown | None:
    which = request.WhichOneof("by")
    if which == "tag":
        return breakdowns.ByTag(request.tag.dimension)
    if which == "order_time":
        return breakdowns.ByOrderTime(request.order_time.time_zone, request.order_time.window_days)
    if which == "weekly":
        weekly = request.weekly
        return breakdowns.Weekly(
            _date(weekly.start_date) if weekly.HasField("start_date") else None,
            _date(weekly.end_date) if weekly.HasField("end_date") else None,
            weekly.time_zone,
            weekly.dimension,
            weekly.value,
        )
    return None


def _date(value: date_pb2.Date) -> dt.date | None:
    """A full calendar date, or None (year-less or invalid dates are not dates a range can use)."""
    try:
        return dt.date(value.year, value.month, value.day)
    except ValueError:
        return None


def breakdown_to_proto(result: breakdowns.Result) -> audience_service_pb2.BreakdownAudienceResponse:
    reply = audience_service_pb2.BreakdownAudienceResponse(
        member_count=result.member_count, version=result.version
    )
    if result.tags is not None:
        reply.members_without_value = result.tags.without_value
        reply.tag_values.extend(
            audience_service_pb2.TagValueCount(value=value, member_count=n) for value, n in result.tags.values
        )
    for cell in result.order_times or []:
        reply.order_times.add(
            weekday=cell.weekday, hour=cell.hour, order_count=cell.orders, member_count=cell.members
        )
    for week in result.weeks or []:
        start = date_pb2.Date(year=week.week_start.year, month=week.week_start.month, day=week.week_start.day)
        reply.weeks.add(
            week_start=start, buyer_count=week.buyers, order_count=week.orders, gmv_minor=week.gmv_minor
        )
    return reply
