"""Builders for audience rules, and the tagging calls that give the tests their members and facts."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from memberops.audience.v1 import audience_pb2, audience_service_pb2
from memberops.tagging.v1 import facts_pb2, member_pb2, rules_pb2, tagging_service_pb2, tags_pb2

from tests.conftest import ACME, unique
from tests.tagging.facts_helpers import stamp
from tests.tagging.rule_builders import Op, agg, attribute, cond

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub as AudienceStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub

Rule = audience_pb2.AudienceRule
Match = audience_pb2.TagMatch
Fn = rules_pb2.AggregateFunction
CART, FAVOURITE = facts_pb2.EVENT_KIND_CART, facts_pb2.EVENT_KIND_FAVOURITE
_counter = itertools.count()


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def audience_id() -> str:
    return unique("aud")


def dimension() -> str:
    return f"aud_dim_{next(_counter)}_{now().strftime('%H%M%S%f')}"


# --- rules ---------------------------------------------------------------------------------------


def tag(dimension: str, match: int, *values: str) -> Rule:
    return Rule(tag=audience_pb2.TagCondition(dimension=dimension, match=match, values=values))  # type: ignore[arg-type]


def condition(rule: rules_pb2.Rule) -> Rule:
    """A tagging rule condition (as built by tests.tagging.rule_builders.cond) as an audience node."""
    return Rule(condition=rule.condition)


def fact(operand: rules_pb2.Operand, op: int, *values: Any) -> Rule:
    return condition(cond(operand, op, *values))


def in_batch(batch: str) -> Rule:
    """Members whose `batch` attribute is this test's: keeps counts exact on a shared tenant."""
    return fact(attribute("batch"), Op.OPERATOR_EQ, batch)


def all_of(*rules: Rule) -> Rule:
    return Rule(all=audience_pb2.AudienceRuleList(rules=rules))


def any_of(*rules: Rule) -> Rule:
    return Rule(any=audience_pb2.AudienceRuleList(rules=rules))


def not_(rule: Rule) -> Rule:
    negation = Rule()
    getattr(negation, "not").CopyFrom(rule)
    return negation


def member_of(audience: str) -> Rule:
    return Rule(audience=f"audiences/{audience}")


def order_count(window_days: int = 0, **filters: Any) -> rules_pb2.Operand:
    return agg(Fn.AGGREGATE_FUNCTION_ORDER_COUNT, window_days, **filters)


def amount_sum(window_days: int = 0, **filters: Any) -> rules_pb2.Operand:
    return agg(Fn.AGGREGATE_FUNCTION_ORDER_AMOUNT_SUM, window_days, **filters)


def event_count(window_days: int, **filters: Any) -> rules_pb2.Operand:
    return agg(Fn.AGGREGATE_FUNCTION_EVENT_COUNT, window_days, **filters)


# --- audience calls ------------------------------------------------------------------------------


async def create(
    stub: AudienceStub, rule: Rule, name: str | None = None, metadata: Any = ACME, request_id: str = ""
) -> audience_pb2.Audience:
    audience = audience_pb2.Audience(audience_id=name or audience_id(), rule=rule)
    request = audience_service_pb2.CreateAudienceRequest(audience=audience, request_id=request_id)
    return await stub.CreateAudience(request, metadata=metadata)


async def count(stub: AudienceStub, name: str, metadata: Any = ACME) -> int:
    request = audience_service_pb2.CountAudienceRequest(name=f"audiences/{name}")
    return (await stub.CountAudience(request, metadata=metadata)).member_count


async def list_all(stub: AudienceStub, name: str, page_size: int = 0, metadata: Any = ACME) -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        request = audience_service_pb2.ListAudienceMembersRequest(
            name=f"audiences/{name}", page_size=page_size, page_token=token
        )
        page = await stub.ListAudienceMembers(request, metadata=metadata)
        ids.extend(page.member_ids)
        token = page.next_page_token
        if not token:
            return ids


async def export(stub: AudienceStub, name: str, chunk_size: int = 0, metadata: Any = ACME) -> list[list[str]]:
    request = audience_service_pb2.ExportAudienceRequest(name=f"audiences/{name}", chunk_size=chunk_size)
    return [list(chunk.member_ids) async for chunk in stub.ExportAudience(request, metadata=metadata)]


async def check(stub: AudienceStub, name: str, member_id: str, metadata: Any = ACME) -> bool:
    request = audience_service_pb2.CheckMembershipRequest(
        audience=f"audiences/{name}", member=f"members/{member_id}"
    )
    return (await stub.CheckMembership(request, metadata=metadata)).is_member


# --- tagging calls -------------------------------------------------------------------------------


async def member(
    stub: TaggingStub, batch: str, metadata: Any = ACME, member_id: str | None = None, **profile: Any
) -> str:
    message = member_pb2.Member(member_id=member_id or unique(), profile=member_pb2.Profile(**profile))
    message.attributes.update({"batch": batch})
    await stub.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=message), metadata=metadata)
    return message.member_id


async def import_batch(stub: TaggingStub, batch: str, count: int, metadata: Any = ACME) -> list[str]:
    """`count` members of `batch` (ids `{batch}-00000` on), in one ImportMembers call."""
    members = []
    for n in range(count):
        message = member_pb2.Member(member_id=f"{batch}-{n:05d}")
        message.attributes.update({"batch": batch})
        members.append(message)

    async def requests() -> AsyncIterator[tagging_service_pb2.ImportMembersRequest]:
        yield tagging_service_pb2.ImportMembersRequest(members=members)

    imported = await stub.ImportMembers(requests(), metadata=metadata, timeout=60)
    assert imported.received_count == count
    return [m.member_id for m in members]


async def order(
    stub: TaggingStub,
    member_id: str,
    days_ago: float,
    lines: Sequence[tuple[str, int]],
    metadata: Any = ACME,
    order_id: str | None = None,
) -> None:
    """An order paid `days_ago`, with one line per (category, unit price in minor units)."""
    message = facts_pb2.Order(
        order_id=order_id or unique("o"),
        member_id=member_id,
        paid_time=stamp(now() - dt.timedelta(days=days_ago)),
        amount_minor=sum(price for _, price in lines),
        lines=[
            facts_pb2.OrderLine(
                line_id=str(i), sku=f"sku-{category}", category=category, quantity=1, unit_price_minor=price
            )
            for i, (category, price) in enumerate(lines)
        ],
    )
    await stub.RecordOrder(tagging_service_pb2.RecordOrderRequest(order=message), metadata=metadata)


async def event(
    stub: TaggingStub, member_id: str, kind: int, days_ago: float, category: str, metadata: Any = ACME
) -> None:
    message = facts_pb2.BehaviorEvent(
        event_id=unique("e"),
        member_id=member_id,
        kind=kind,  # type: ignore[arg-type]
        occur_time=stamp(now() - dt.timedelta(days=days_ago)),
        sku=f"sku-{category}",
        category=category,
    )
    await stub.RecordEvents(tagging_service_pb2.RecordEventsRequest(events=[message]), metadata=metadata)


async def manual_dimension(stub: TaggingStub, values: Sequence[str], metadata: Any = ACME) -> str:
    name = dimension()
    definition = tags_pb2.TagDefinition(
        dimension=name,
        category=tags_pb2.TAG_CATEGORY_MARKETING,
        kind=tags_pb2.TAG_KIND_MANUAL,
        refresh_policy=tags_pb2.REFRESH_POLICY_SCHEDULED,
        cardinality=tags_pb2.CARDINALITY_MULTI,
        values=[tags_pb2.TagValue(value=v) for v in values],
    )
    await stub.CreateTagDefinition(
        tagging_service_pb2.CreateTagDefinitionRequest(tag_definition=definition), metadata=metadata
    )
    return name


async def give(
    stub: TaggingStub, dimension: str, value: str, member_ids: Sequence[str], metadata: Any = ACME
) -> None:
    request = tagging_service_pb2.AddMemberTagsRequest(
        dimension=dimension, value=value, member_ids=member_ids, operator="ops@test", reason="audience test"
    )
    await stub.AddMemberTags(request, metadata=metadata)
