"""TaggingService over gRPC: protobuf in, domain calls, protobuf out.

Domain errors propagate to the shared interceptor, which turns them into status codes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import google.type.date_pb2 as date_pb2
from google.protobuf import field_mask_pb2, json_format, struct_pb2
from memberops.tagging.v1 import (
    facts_pb2,
    member_pb2,
    tagging_service_pb2,
    tagging_service_pb2_grpc,
    tags_pb2,
)

from runtime import checks, day_ranges
from runtime.auth import current_tenant
from runtime.errors import FieldViolation, InvalidArgument, Violations
from services.tagging import catalog, history_rebuilds
from services.tagging.catalog import Catalog
from services.tagging.daily_kpis import DailyKpis, DayKpis
from services.tagging.domain import (
    BehaviorEvent,
    Contact,
    FeedEntry,
    FeedKind,
    Member,
    MemberInput,
    Order,
    OrderInput,
    OrderLine,
    Profile,
    Refund,
    RefundInput,
    RefundLine,
)
from services.tagging.erasure import Erasures
from services.tagging.erasure_messages import erasure_request_from_proto, erasure_to_proto
from services.tagging.evaluation import MemberTag, OperatorChange, Tagger
from services.tagging.fact_imports import (
    EventBatch,
    FactImports,
    RefundBatch,
    converted,
    import_response,
)
from services.tagging.facts import Facts
from services.tagging.feed import Feed
from services.tagging.feed_messages import feed_entry_to_proto
from services.tagging.history_rebuilds import HistoryRebuilds
from services.tagging.member_orders import MemberOrder, MemberOrders
from services.tagging.member_search import MemberSearch
from services.tagging.members import Members, bounded, check_update_paths
from services.tagging.stats import Stats, TagStats

MEMBER_NAME_PREFIX = "members/"
# Members per BatchGetMemberTags call (as BatchGetMembers).
MAX_BATCH_MEMBER_TAGS = 10_000
# RecomputeTags(as_of) evaluates the past from here on: before it no shop kept member data.
EARLIEST_AS_OF = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
FEED_KINDS = frozenset(k.value for k in FeedKind if k is not FeedKind.UNSPECIFIED)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class TaggingApi(tagging_service_pb2_grpc.TaggingServiceServicer):
    def __init__(
        self,
        members: Members,
        facts: Facts,
        feed: Feed,
        tag_catalog: Catalog,
        tagger: Tagger,
        tag_stats: Stats,
        fact_imports: FactImports,
        clock: Callable[[], dt.datetime] = utc_now,
        *,
        history_rebuilds: HistoryRebuilds,
        erasures: Erasures,
        member_search: MemberSearch,
        member_orders: MemberOrders,
        daily_kpis: DailyKpis,
    ) -> None:
        self._members = members
        self._facts = facts
        self._feed = feed
        self._catalog = tag_catalog
        self._tagger = tagger
        self._stats = tag_stats
        self._imports = fact_imports
        self._clock = clock
        self._rebuilds = history_rebuilds
        self._erasures = erasures
        self._search = member_search
        self._member_orders = member_orders
        self._kpis = daily_kpis

    async def UpsertMember(
        self, request: tagging_service_pb2.UpsertMemberRequest, context: Any
    ) -> member_pb2.Member:
        if not request.HasField("member"):
            raise InvalidArgument.field("member", "is required")
        stored = await self._members.upsert(
            current_tenant(), member_from_proto(request.member), self._clock()
        )
        return member_to_proto(stored)

    async def UpdateMember(
        self, request: tagging_service_pb2.UpdateMemberRequest, context: Any
    ) -> member_pb2.Member:
        if not request.HasField("member"):
            raise InvalidArgument.field("member", "is required")
        paths = list(request.update_mask.paths)
        check_update_paths(paths)
        stored = await self._members.update(
            current_tenant(), member_from_proto(request.member), paths, self._clock()
        )
        return member_to_proto(stored)

    async def GetMember(
        self, request: tagging_service_pb2.GetMemberRequest, context: Any
    ) -> member_pb2.Member:
        found = await self._members.get(current_tenant(), member_id_from_name(request.name, "name"))
        return member_to_proto(found)

    async def BatchGetMembers(
        self, request: tagging_service_pb2.BatchGetMembersRequest, context: Any
    ) -> tagging_service_pb2.BatchGetMembersResponse:
        violations = Violations()
        member_ids = []
        for i, name in enumerate(request.names):
            if not name.startswith(MEMBER_NAME_PREFIX):
                violations.add(f"names[{i}]", "must be a resource name of the form members/{member_id}")
            member_ids.append(name.removeprefix(MEMBER_NAME_PREFIX))
        mask = read_mask_from_proto(request.read_mask, violations) if request.HasField("read_mask") else None
        violations.raise_if_any()
        found = await self._members.get_many(current_tenant(), member_ids, request.allow_missing)
        if mask is None:
            return tagging_service_pb2.BatchGetMembersResponse(members=[member_to_proto(m) for m in found])
        return tagging_service_pb2.BatchGetMembersResponse(
            members=[masked_member_to_proto(m, mask) for m in found]
        )

    async def SearchMembers(
        self, request: tagging_service_pb2.SearchMembersRequest, context: Any
    ) -> tagging_service_pb2.SearchMembersResponse:
        found, token = await self._search.search(
            current_tenant(), request.query, request.page_size, request.page_token
        )
        return tagging_service_pb2.SearchMembersResponse(
            members=[member_to_proto(m) for m in found], next_page_token=token
        )

    async def ListMemberOrders(
        self, request: tagging_service_pb2.ListMemberOrdersRequest, context: Any
    ) -> tagging_service_pb2.ListMemberOrdersResponse:
        member_id = member_id_from_name(request.member, "member")
        orders, token = await self._member_orders.list(
            current_tenant(), member_id, request.page_size, request.page_token
        )
        return tagging_service_pb2.ListMemberOrdersResponse(
            orders=[member_order_to_proto(o) for o in orders], next_page_token=token
        )

    async def GetDailyKpis(
        self, request: tagging_service_pb2.GetDailyKpisRequest, context: Any
    ) -> tagging_service_pb2.GetDailyKpisResponse:
        days = await self._kpis.get(current_tenant(), day_ranges.checked(request))
        return tagging_service_pb2.GetDailyKpisResponse(days=[day_kpis_to_proto(d) for d in days])

    async def RecordOrder(
        self, request: tagging_service_pb2.RecordOrderRequest, context: Any
    ) -> facts_pb2.Order:
        if not request.HasField("order"):
            raise InvalidArgument.field("order", "is required")
        stored = await self._facts.record_order(
            current_tenant(), order_from_proto(request.order), self._clock()
        )
        return order_to_proto(stored)

    async def RecordRefund(
        self, request: tagging_service_pb2.RecordRefundRequest, context: Any
    ) -> facts_pb2.Refund:
        if not request.HasField("refund"):
            raise InvalidArgument.field("refund", "is required")
        stored = await self._facts.record_refund(
            current_tenant(), refund_from_proto(request.refund), self._clock()
        )
        return refund_to_proto(stored)

    async def RecordEvents(
        self, request: tagging_service_pb2.RecordEventsRequest, context: Any
    ) -> tagging_service_pb2.RecordEventsResponse:
        events = [event_from_proto(e, i) for i, e in enumerate(request.events)]
        recorded, duplicates = await self._facts.record_events(current_tenant(), events, self._clock())
        return tagging_service_pb2.RecordEventsResponse(recorded_count=recorded, duplicate_count=duplicates)

    async def ReadFeed(
        self, request: tagging_service_pb2.ReadFeedRequest, context: Any
    ) -> tagging_service_pb2.ReadFeedResponse:
        kinds = [FeedKind(k) for k in request.kinds if k in FEED_KINDS]
        if len(kinds) != len(request.kinds):
            raise InvalidArgument.field("kinds", "must be FeedEntryKind values other than UNSPECIFIED")
        entries, next_cursor = await self._feed.read(
            current_tenant(), request.after_cursor, request.limit, kinds, skip_to_end=request.skip_to_end
        )
        return tagging_service_pb2.ReadFeedResponse(
            entries=[feed_entry_to_proto(e) for e in entries], next_cursor=next_cursor
        )

    async def CreateTagDefinition(
        self, request: tagging_service_pb2.CreateTagDefinitionRequest, context: Any
    ) -> tags_pb2.TagDefinition:
        if not request.HasField("tag_definition"):
            raise InvalidArgument.field("tag_definition", "is required")
        created = await self._catalog.create(current_tenant(), definition_from_proto(request.tag_definition))
        return definition_to_proto(created)

    async def UpdateTagDefinition(
        self, request: tagging_service_pb2.UpdateTagDefinitionRequest, context: Any
    ) -> tags_pb2.TagDefinition:
        if not request.HasField("tag_definition"):
            raise InvalidArgument.field("tag_definition", "is required")
        message = request.tag_definition
        if message.name and not message.dimension:
            message.dimension = catalog.dimension_from_name(message.name, "tag_definition.name")
        updated = await self._catalog.update(
            current_tenant(), definition_from_proto(message), request.expected_version
        )
        return definition_to_proto(updated)

    async def GetTagDefinition(
        self, request: tagging_service_pb2.GetTagDefinitionRequest, context: Any
    ) -> tags_pb2.TagDefinition:
        dimension = catalog.dimension_from_name(request.name, "name")
        return definition_to_proto(await self._catalog.get(current_tenant(), dimension, request.version))

    async def ListTagDefinitions(
        self, request: tagging_service_pb2.ListTagDefinitionsRequest, context: Any
    ) -> tagging_service_pb2.ListTagDefinitionsResponse:
        page, token = await self._catalog.list_page(
            current_tenant(), request.page_size, request.page_token, request.include_retired
        )
        return tagging_service_pb2.ListTagDefinitionsResponse(
            tag_definitions=[definition_to_proto(d) for d in page], next_page_token=token
        )

    async def RetireTagDefinition(
        self, request: tagging_service_pb2.RetireTagDefinitionRequest, context: Any
    ) -> tags_pb2.TagDefinition:
        dimension = catalog.dimension_from_name(request.name, "name")
        return definition_to_proto(await self._catalog.retire(current_tenant(), dimension))

    async def ExplainTags(
        self, request: tagging_service_pb2.ExplainTagsRequest, context: Any
    ) -> tagging_service_pb2.ExplainTagsResponse:
        member_id = member_id_from_name(request.member, "member")
        explanations = await self._catalog.explain(
            current_tenant(), member_id, list(request.dimensions), self._clock()
        )
        response = tagging_service_pb2.ExplainTagsResponse()
        for explanation in explanations:
            item = response.explanations.add(
                dimension=explanation.dimension, version=explanation.version, values=explanation.values
            )
            item.figures.update(explanation.figures)
        return response

    async def GetMemberTags(
        self, request: tagging_service_pb2.GetMemberTagsRequest, context: Any
    ) -> tagging_service_pb2.GetMemberTagsResponse:
        member_id = member_id_from_name(request.member, "member")
        violations = Violations()
        now = self._clock()
        known_at = _optional_time(request, "known_at", violations, "known_at")
        if known_at is not None and known_at > now:
            violations.add("known_at", "must not be in the future: what was believed is known up to now")
        # What was believed at known_at about then, unless a moment is named.
        as_of = _optional_time(request, "as_of", violations, "as_of") or known_at or now
        violations.raise_if_any()
        tags = await self._tagger.member_tags(current_tenant(), member_id, as_of, known_at)
        return tagging_service_pb2.GetMemberTagsResponse(tags=[member_tag_to_proto(t) for t in tags])

    async def BatchGetMemberTags(
        self, request: tagging_service_pb2.BatchGetMemberTagsRequest, context: Any
    ) -> tagging_service_pb2.BatchGetMemberTagsResponse:
        violations = Violations()
        if not 1 <= len(request.members) <= MAX_BATCH_MEMBER_TAGS:
            violations.add("members", f"must name 1-{MAX_BATCH_MEMBER_TAGS} members")
        member_ids: list[str] = []
        for i, name in enumerate(request.members):
            if not name.startswith(MEMBER_NAME_PREFIX):
                violations.add(f"members[{i}]", "must be a resource name of the form members/{member_id}")
            member_ids.append(name.removeprefix(MEMBER_NAME_PREFIX))
        if len(set(member_ids)) != len(member_ids):
            violations.add("members", "must name each member at most once")
        for i, dimension in enumerate(request.dimensions):
            if not catalog.DIMENSION.match(dimension):
                violations.add(f"dimensions[{i}]", "is not a dimension name")
        violations.raise_if_any()
        tags = await self._tagger.members_tags(current_tenant(), member_ids, list(request.dimensions))
        return tagging_service_pb2.BatchGetMemberTagsResponse(tags=[member_tag_to_proto(t) for t in tags])

    async def ListTagChanges(
        self, request: tagging_service_pb2.ListTagChangesRequest, context: Any
    ) -> tagging_service_pb2.ListTagChangesResponse:
        member_id = member_id_from_name(request.member, "member") if request.member else ""
        changes, token = await self._tagger.changes(
            current_tenant(),
            member_id,
            request.dimension,
            request.page_size,
            request.page_token,
            include_superseded=request.include_superseded,
        )
        return tagging_service_pb2.ListTagChangesResponse(
            changes=[member_tag_to_proto(t) for t in changes], next_page_token=token
        )

    async def AddMemberTags(
        self, request: tagging_service_pb2.AddMemberTagsRequest, context: Any
    ) -> tagging_service_pb2.ChangeMemberTagsResponse:
        changed = await self._tagger.change_operator_tags(
            current_tenant(), operator_change(request), add=True, now=self._clock()
        )
        return tagging_service_pb2.ChangeMemberTagsResponse(changed_count=changed)

    async def RemoveMemberTags(
        self, request: tagging_service_pb2.RemoveMemberTagsRequest, context: Any
    ) -> tagging_service_pb2.ChangeMemberTagsResponse:
        changed = await self._tagger.change_operator_tags(
            current_tenant(), operator_change(request), add=False, now=self._clock()
        )
        return tagging_service_pb2.ChangeMemberTagsResponse(changed_count=changed)

    async def RecomputeTags(
        self, request: tagging_service_pb2.RecomputeTagsRequest, context: Any
    ) -> tagging_service_pb2.RecomputeTagsResponse:
        now = self._clock()
        violations = Violations()
        as_of = _optional_time(request, "as_of", violations, "as_of")
        if as_of is not None and not EARLIEST_AS_OF <= as_of < now:
            violations.add(
                "as_of", f"must be in the past and not before {EARLIEST_AS_OF:%Y-%m-%d} (unset: now)"
            )
        violations.raise_if_any()
        results = await self._tagger.recompute(
            current_tenant(), list(request.dimensions), now, as_of, full=request.full
        )
        return tagging_service_pb2.RecomputeTagsResponse(
            results=[
                tags_pb2.RecomputeResult(
                    dimension=r.dimension,
                    definition_version=r.definition_version,
                    added_count=r.added,
                    removed_count=r.removed,
                    incremental=r.incremental,
                    evaluated_count=r.evaluated,
                )
                for r in results
            ]
        )

    async def RebuildTagHistory(
        self, request: tagging_service_pb2.RebuildTagHistoryRequest, context: Any
    ) -> tagging_service_pb2.TagHistoryRebuild:
        arguments = history_rebuilds.checked(request, self._clock())
        return history_rebuilds.to_proto(await self._rebuilds.start(current_tenant(), arguments))

    async def GetTagHistoryRebuild(
        self, request: tagging_service_pb2.GetTagHistoryRebuildRequest, context: Any
    ) -> tagging_service_pb2.TagHistoryRebuild:
        request_id = history_rebuilds.request_id_from_name(request.name)
        return history_rebuilds.to_proto(await self._rebuilds.get(current_tenant(), request_id))

    async def StreamFeed(
        self, request: tagging_service_pb2.StreamFeedRequest, context: Any
    ) -> AsyncIterator[tagging_service_pb2.StreamFeedResponse]:
        """Runs until the caller cancels or its deadline passes; gRPC then cancels this generator.

        Closing the follower when this generator ends, rather than when it is collected, frees its
        slot and its message as soon as the call is over."""
        follower = self._feed.follow(
            current_tenant(), request.after_cursor, request.batch_size, feed_response
        )
        async with contextlib.aclosing(follower):
            async for response in follower:
                yield response

    async def ImportMembers(
        self, request_iterator: AsyncIterator[tagging_service_pb2.ImportMembersRequest], context: Any
    ) -> tagging_service_pb2.ImportMembersResponse:
        """Each request message is stored (committed) before the next is read."""
        tenant_id = current_tenant()
        received = changed = batch = 0
        async for request in request_iterator:
            path = f"requests[{batch}].members"
            members = members_from_proto(request.members, path)
            changed += await self._members.import_batch(tenant_id, members, self._clock(), path)
            received += len(members)
            batch += 1
        return tagging_service_pb2.ImportMembersResponse(received_count=received, changed_count=changed)

    async def ImportOrders(
        self, request_iterator: AsyncIterator[tagging_service_pb2.ImportOrdersRequest], context: Any
    ) -> tagging_service_pb2.ImportFactsResponse:
        """Each batch is committed before the next; the members' tags are refreshed before the reply."""
        counts = await self._imports.import_orders(
            current_tenant(), request_iterator, order_from_proto, self._clock
        )
        return import_response(counts)

    async def ImportRefunds(
        self, request_iterator: AsyncIterator[tagging_service_pb2.ImportRefundsRequest], context: Any
    ) -> tagging_service_pb2.ImportFactsResponse:
        def prepare(
            request: tagging_service_pb2.ImportRefundsRequest, k: int, now: dt.datetime
        ) -> RefundBatch:
            path = f"requests[{k}].refunds"
            refunds = converted(request.refunds, lambda m, i: refund_from_proto(m), "refund", path)
            return FactImports.prepare_refunds(refunds, now, path)

        imports = self._imports
        counts = await imports.imported(
            current_tenant(), request_iterator, prepare, imports.store_refunds, self._clock
        )
        return import_response(counts)

    async def ImportEvents(
        self, request_iterator: AsyncIterator[tagging_service_pb2.ImportEventsRequest], context: Any
    ) -> tagging_service_pb2.ImportFactsResponse:
        def prepare(request: tagging_service_pb2.ImportEventsRequest, k: int, now: dt.datetime) -> EventBatch:
            path = f"requests[{k}].events"
            events = converted(request.events, event_from_proto, "events[{i}]", path)
            return FactImports.prepare_events(events, now, path)

        imports = self._imports
        counts = await imports.imported(
            current_tenant(), request_iterator, prepare, imports.store_events, self._clock
        )
        return import_response(counts)

    async def GetTagStats(
        self, request: tagging_service_pb2.GetTagStatsRequest, context: Any
    ) -> tagging_service_pb2.GetTagStatsResponse:
        violations = Violations()
        as_of = _optional_time(request, "as_of", violations, "as_of")
        violations.raise_if_any()
        stats = await self._stats.get(current_tenant(), list(request.dimensions), as_of)
        return tag_stats_to_proto(stats)

    async def EraseMember(
        self, request: tagging_service_pb2.EraseMemberRequest, context: Any
    ) -> tagging_service_pb2.MemberErasure:
        erasure = erasure_request_from_proto(request)
        return erasure_to_proto(await self._erasures.erase(current_tenant(), erasure, self._clock()))


def member_id_from_name(name: str, field: str) -> str:
    if not name.startswith(MEMBER_NAME_PREFIX) or len(name) == len(MEMBER_NAME_PREFIX):
        raise InvalidArgument.field(field, "must be a resource name of the form members/{member_id}")
    return name.removeprefix(MEMBER_NAME_PREFIX)


def member_from_proto(message: member_pb2.Member, path: str = "member") -> MemberInput:
    violations = Violations()
    p = message.profile
    birthday = _date(p.birthday, violations, f"{path}.profile.birthday") if p.HasField("birthday") else None
    register_time = (
        checks.timestamp(p.register_time, violations, f"{path}.profile.register_time")
        if p.HasField("register_time")
        else None
    )
    violations.raise_if_any()
    return MemberInput(
        member_id=message.member_id,
        profile=Profile(
            gender=p.gender,
            birthday=birthday,
            city=p.city,
            city_tier=p.city_tier,
            register_time=register_time,
            register_channel=p.register_channel,
            nickname=p.nickname,
            level=p.level,
        ),
        attributes=json_format.MessageToDict(message.attributes),
        contact=Contact(
            phone=message.contact.phone,
            email=message.contact.email,
            preferred_channel=message.contact.preferred_channel,
            opted_out_channels=tuple(message.contact.opted_out_channels),
            time_zone=message.contact.time_zone,
            wecom_external_userid=message.contact.wecom_external_userid,
            wecom_staff_userid=message.contact.wecom_staff_userid,
        ),
    )


def members_from_proto(messages: Sequence[member_pb2.Member], path: str) -> list[MemberInput]:
    """Every member of a batch converted, or InvalidArgument naming the bad fields of all of them."""
    members: list[MemberInput] = []
    found: list[FieldViolation] = []
    for i, message in enumerate(messages):
        try:
            members.append(member_from_proto(message, f"{path}[{i}]"))
        except InvalidArgument as error:
            found.extend(error.violations)
    if found:
        raise bounded(found, path)
    return members


# What a read mask may name: fields of Member, and fields of its profile.
MASKABLE = frozenset({"profile", "contact", "attributes", "create_time", "update_time", "revision"})
PROFILE_MASKABLE = frozenset(member_pb2.Profile.DESCRIPTOR.fields_by_name)


# Fields a masked member gets without building the whole message (dates and times are the costly ones).
_LEAN_PATHS = frozenset(
    {"name", "member_id", "contact", "revision"}
    | {f"profile.{f}" for f in ("gender", "city", "city_tier", "register_channel", "nickname", "level")}
)


def read_mask_from_proto(mask: field_mask_pb2.FieldMask, violations: Violations) -> field_mask_pb2.FieldMask:
    for i, path in enumerate(mask.paths):
        known = path in MASKABLE or (path.startswith("profile.") and path[8:] in PROFILE_MASKABLE)
        if not known and path not in ("name", "member_id"):
            violations.add(f"read_mask.paths[{i}]", "names no field of a member that a mask can select")
    return mask


def masked_member_to_proto(member: Member, mask: field_mask_pb2.FieldMask) -> member_pb2.Member:
    """The member with only the masked fields set: a batch reader that needs little pays little."""
    paths = frozenset(mask.paths)
    if not paths <= _LEAN_PATHS:
        result = member_pb2.Member(name=MEMBER_NAME_PREFIX + member.member_id, member_id=member.member_id)
        mask.MergeMessage(member_to_proto(member), result)
        return result
    profile = [path[8:] for path in paths if path.startswith("profile.")]
    c = member.contact
    return member_pb2.Member(
        name=MEMBER_NAME_PREFIX + member.member_id,
        member_id=member.member_id,
        profile=member_pb2.Profile(**{f: getattr(member.profile, f) for f in profile}) if profile else None,
        contact=member_pb2.Contact(
            phone=c.phone,
            email=c.email,
            preferred_channel=c.preferred_channel,  # type: ignore[arg-type]
            opted_out_channels=c.opted_out_channels,  # type: ignore[arg-type]
            time_zone=c.time_zone,
            wecom_external_userid=c.wecom_external_userid,
            wecom_staff_userid=c.wecom_staff_userid,
        )
        if "contact" in paths
        else None,
        revision=member.revision if "revision" in paths else 0,
    )


def member_to_proto(member: Member) -> member_pb2.Member:
    p = member.profile
    profile = member_pb2.Profile(
        gender=p.gender,  # type: ignore[arg-type]
        city=p.city,
        city_tier=p.city_tier,  # type: ignore[arg-type]
        register_channel=p.register_channel,
        nickname=p.nickname,
        level=p.level,
    )
    if p.birthday is not None:
        profile.birthday.CopyFrom(
            date_pb2.Date(year=p.birthday.year, month=p.birthday.month, day=p.birthday.day)
        )
    if p.register_time is not None:
        profile.register_time.FromDatetime(p.register_time)
    attributes = struct_pb2.Struct()
    attributes.update(member.attributes)
    result = member_pb2.Member(
        name=MEMBER_NAME_PREFIX + member.member_id,
        member_id=member.member_id,
        profile=profile,
        attributes=attributes,
        revision=member.revision,
        contact=member_pb2.Contact(
            phone=member.contact.phone,
            email=member.contact.email,
            preferred_channel=member.contact.preferred_channel,  # type: ignore[arg-type]
            opted_out_channels=member.contact.opted_out_channels,  # type: ignore[arg-type]
            time_zone=member.contact.time_zone,
            wecom_external_userid=member.contact.wecom_external_userid,
            wecom_staff_userid=member.contact.wecom_staff_userid,
        ),
    )
    result.create_time.FromDatetime(member.create_time)
    result.update_time.FromDatetime(member.update_time)
    return result


def _date(value: date_pb2.Date, violations: Violations, field: str) -> dt.date | None:
    try:
        return dt.date(value.year, value.month, value.day)
    except ValueError:
        violations.add(field, "must be a full, valid calendar date (year, month and day)")
        return None


def member_order_to_proto(member_order: MemberOrder) -> tagging_service_pb2.MemberOrder:
    return tagging_service_pb2.MemberOrder(
        order=order_to_proto(member_order.order),
        refunds=[refund_to_proto(r) for r in member_order.refunds],
    )


def day_kpis_to_proto(day: DayKpis) -> tagging_service_pb2.DailyKpis:
    return tagging_service_pb2.DailyKpis(
        date=date_pb2.Date(year=day.date.year, month=day.date.month, day=day.date.day),
        orders=day.orders,
        gmv_minor=day.gmv_minor,
        buyers=day.buyers,
        repeat_buyers=day.repeat_buyers,
        new_members=day.new_members,
        active_members=day.active_members,
        refunds=day.refunds,
        refund_minor=day.refund_minor,
    )


def _optional_time(message: Any, name: str, violations: Violations, path: str) -> dt.datetime | None:
    return checks.timestamp(getattr(message, name), violations, path) if message.HasField(name) else None


def order_from_proto(message: facts_pb2.Order) -> OrderInput:
    violations = Violations()
    paid_time = _optional_time(message, "paid_time", violations, "order.paid_time")
    violations.raise_if_any()
    return OrderInput(
        order_id=message.order_id,
        member_id=message.member_id,
        paid_time=paid_time,
        amount_minor=message.amount_minor,
        store=message.store,
        payment_method=message.payment_method,
        lines=tuple(
            OrderLine(
                line_id=line.line_id,
                sku=line.sku,
                category=line.category,
                brand=line.brand,
                quantity=line.quantity,
                unit_price_minor=line.unit_price_minor,
            )
            for line in message.lines
        ),
        coupon_codes=tuple(message.coupon_codes),
    )


def order_to_proto(order: Order) -> facts_pb2.Order:
    message = facts_pb2.Order(
        name=f"orders/{order.order_id}",
        order_id=order.order_id,
        member_id=order.member_id,
        amount_minor=order.amount_minor,
        store=order.store,
        payment_method=order.payment_method,
        refunded_amount_minor=order.refunded_amount_minor,
        lines=[
            facts_pb2.OrderLine(
                line_id=line.line_id,
                sku=line.sku,
                category=line.category,
                brand=line.brand,
                quantity=line.quantity,
                unit_price_minor=line.unit_price_minor,
            )
            for line in order.lines
        ],
        coupon_codes=order.coupon_codes,
    )
    message.paid_time.FromDatetime(order.paid_time)
    message.record_time.FromDatetime(order.record_time)
    return message


def refund_from_proto(message: facts_pb2.Refund) -> RefundInput:
    violations = Violations()
    refund_time = _optional_time(message, "refund_time", violations, "refund.refund_time")
    violations.raise_if_any()
    return RefundInput(
        refund_id=message.refund_id,
        order_id=message.order_id,
        refund_time=refund_time,
        amount_minor=message.amount_minor,
        lines=tuple(RefundLine(line.line_id, line.quantity) for line in message.lines),
    )


def refund_to_proto(refund: Refund) -> facts_pb2.Refund:
    message = facts_pb2.Refund(
        name=f"refunds/{refund.refund_id}",
        refund_id=refund.refund_id,
        order_id=refund.order_id,
        member_id=refund.member_id,
        amount_minor=refund.amount_minor,
        lines=[facts_pb2.RefundLine(line_id=line.line_id, quantity=line.quantity) for line in refund.lines],
    )
    message.refund_time.FromDatetime(refund.refund_time)
    return message


def event_from_proto(message: facts_pb2.BehaviorEvent, index: int) -> BehaviorEvent:
    violations = Violations()
    occur_time = _optional_time(message, "occur_time", violations, f"events[{index}].occur_time")
    violations.raise_if_any()
    return BehaviorEvent(
        event_id=message.event_id,
        member_id=message.member_id,
        kind=message.kind,
        occur_time=occur_time,
        sku=message.sku,
        category=message.category,
        brand=message.brand,
        query=message.query,
        channel=message.channel,
    )


def feed_response(entries: list[FeedEntry]) -> tagging_service_pb2.StreamFeedResponse:
    return tagging_service_pb2.StreamFeedResponse(
        entries=[feed_entry_to_proto(e) for e in entries], next_cursor=entries[-1].cursor
    )


def definition_from_proto(message: tags_pb2.TagDefinition) -> catalog.DefinitionInput:
    return catalog.DefinitionInput(
        dimension=message.dimension,
        display_name=message.display_name,
        description=message.description,
        category=message.category,
        kind=message.kind,
        refresh_policy=message.refresh_policy,
        cardinality=message.cardinality,
        values=tuple(
            catalog.TagValue(
                value=value.value,
                display_name=value.display_name,
                rule=value.rule if value.HasField("rule") else None,
            )
            for value in message.values
        ),
        model=message.model if message.HasField("model") else None,
    )


def definition_to_proto(definition: catalog.Definition) -> tags_pb2.TagDefinition:
    spec = definition.spec
    message = tags_pb2.TagDefinition(
        name=f"tagDefinitions/{spec.dimension}",
        dimension=spec.dimension,
        display_name=spec.display_name,
        description=spec.description,
        category=spec.category,  # type: ignore[arg-type]
        kind=spec.kind,  # type: ignore[arg-type]
        refresh_policy=spec.refresh_policy,  # type: ignore[arg-type]
        cardinality=spec.cardinality,  # type: ignore[arg-type]
        values=[
            tags_pb2.TagValue(value=value.value, display_name=value.display_name, rule=value.rule)
            for value in spec.values
        ],
        version=definition.version,
        state=int(definition.state),  # type: ignore[arg-type]
        model=spec.model,
    )
    message.create_time.FromDatetime(definition.create_time)
    message.update_time.FromDatetime(definition.update_time)
    return message


def member_tag_to_proto(tag: MemberTag) -> tags_pb2.MemberTag:
    message = tags_pb2.MemberTag(
        member_id=tag.member_id,
        dimension=tag.dimension,
        value=tag.value,
        definition_version=tag.definition_version,
        source=tag.source,  # type: ignore[arg-type]
        set_by=tag.set_by,
        reason=tag.reason,
        removed_by=tag.removed_by,
        removed_reason=tag.removed_reason,
    )
    message.valid_from.FromDatetime(tag.valid_from)
    if tag.valid_to is not None:
        message.valid_to.FromDatetime(tag.valid_to)
    # A holding written before record times were kept was recorded when it began.
    message.record_time.FromDatetime(tag.record_time or tag.valid_from)
    if tag.supersede_time is not None:
        message.supersede_time.FromDatetime(tag.supersede_time)
    return message


def operator_change(
    request: tagging_service_pb2.AddMemberTagsRequest | tagging_service_pb2.RemoveMemberTagsRequest,
) -> OperatorChange:
    return OperatorChange(
        dimension=request.dimension,
        value=request.value,
        member_ids=tuple(request.member_ids),
        operator=request.operator,
        reason=request.reason,
    )


def tag_stats_to_proto(stats: TagStats) -> tagging_service_pb2.GetTagStatsResponse:
    return tagging_service_pb2.GetTagStatsResponse(
        member_count=stats.member_count,
        dimensions=[
            tags_pb2.DimensionStats(
                dimension=d.dimension,
                covered_count=d.covered_count,
                coverage=d.coverage,
                values=[
                    tags_pb2.ValueCount(value=v.value, member_count=v.member_count, share=v.share)
                    for v in d.values
                ],
            )
            for d in stats.dimensions
        ],
    )
