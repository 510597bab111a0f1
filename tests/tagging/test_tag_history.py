"""Tag history on two time axes: valid time corrected by back-dated facts and RecomputeTags(as_of),
record time read back with known_at, superseded versions listed."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from memberops.tagging.v1 import facts_pb2, tagging_service_pb2, tags_pb2

from runtime.db import Database
from tests.conftest import ACME, GLOBEX, TENANT_ACME, TENANT_GLOBEX
from tests.grpc_helpers import failure, field_violations
from tests.tagging.facts_helpers import an_order, new_member, record_order, stamp
from tests.tagging.rule_builders import ALWAYS, Fn, Op, agg, cond
from tests.tagging.test_catalog import create, dimension
from tests.waiting import eventually

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub

DAY = dt.timedelta(days=1)


def buyer(name: str, window_days: int, policy: int) -> tags_pb2.TagDefinition:
    """`regular` with 2+ orders in the window, `buyer` with one, else `none`."""
    count = agg(Fn.AGGREGATE_FUNCTION_ORDER_COUNT, window_days=window_days)
    return tags_pb2.TagDefinition(
        dimension=name,
        display_name="Buyer",
        category=tags_pb2.TAG_CATEGORY_TRANSACTION,
        kind=tags_pb2.TAG_KIND_RULE,
        refresh_policy=policy,  # type: ignore[arg-type]
        cardinality=tags_pb2.CARDINALITY_SINGLE,
        values=[
            tags_pb2.TagValue(value="regular", rule=cond(count, Op.OPERATOR_GE, 2)),
            tags_pb2.TagValue(value="buyer", rule=cond(count, Op.OPERATOR_GE, 1)),
            tags_pb2.TagValue(value="none", rule=ALWAYS),
        ],
    )


async def values_at(
    stub: Stub,
    member_id: str,
    name: str,
    as_of: dt.datetime | None = None,
    known_at: dt.datetime | None = None,
    metadata: Any = ACME,
) -> list[str]:
    request = tagging_service_pb2.GetMemberTagsRequest(member=f"members/{member_id}")
    if as_of is not None:
        request.as_of.CopyFrom(stamp(as_of))
    if known_at is not None:
        request.known_at.CopyFrom(stamp(known_at))
    reply = await stub.GetMemberTags(request, metadata=metadata)
    return [t.value for t in reply.tags if t.dimension == name]


async def recompute(
    stub: Stub, name: str, as_of: dt.datetime | None = None, metadata: Any = ACME
) -> tuple[int, int]:
    request = tagging_service_pb2.RecomputeTagsRequest(dimensions=[name])
    if as_of is not None:
        request.as_of.CopyFrom(stamp(as_of))
    (result,) = (await stub.RecomputeTags(request, metadata=metadata)).results
    return result.added_count, result.removed_count


async def history(
    db: Database, member_id: str, name: str, tenant: str = TENANT_ACME
) -> list[tuple[str, dt.datetime, dt.datetime | None]]:
    async with db.transaction(tenant, readonly=True) as conn:
        rows = await conn.fetch(
            """SELECT value, valid_from, valid_to FROM tagging.member_tags
               WHERE member_id = $1 AND dimension = $2 ORDER BY valid_from""",
            member_id,
            name,
        )
    return [(row["value"], row["valid_from"], row["valid_to"]) for row in rows]


async def superseded(db: Database, name: str) -> int:
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        count = await conn.fetchval(
            "SELECT count(*) FROM tagging.member_tags_superseded WHERE dimension = $1", name
        )
    return int(count)


async def changes(
    stub: Stub, member_id: str, name: str, include_superseded: bool, metadata: Any = ACME
) -> list[tags_pb2.MemberTag]:
    found: list[tags_pb2.MemberTag] = []
    token = ""
    while True:
        reply = await stub.ListTagChanges(
            tagging_service_pb2.ListTagChangesRequest(
                member=f"members/{member_id}",
                dimension=name,
                page_size=2,
                page_token=token,
                include_superseded=include_superseded,
            ),
            metadata=metadata,
        )
        found.extend(reply.changes)
        token = reply.next_page_token
        if not token:
            return found


async def test_a_back_dated_order_corrects_the_history_and_the_old_belief_stays_readable(
    tagging_stub: Stub, db: Database
) -> None:
    name = dimension()
    # Globex: the corrector takes a batch of each tenant in turn, and the other tests' back-dated
    # orders queue theirs in Acme.
    await create(tagging_stub, buyer(name, 90, tags_pb2.REFRESH_POLICY_REAL_TIME), GLOBEX)
    member_id = await new_member(tagging_stub, GLOBEX)
    now = dt.datetime.now(dt.UTC)
    # The history says "none" from 50 days ago on (evaluated then: no order).
    await recompute(tagging_stub, name, as_of=now - 50 * DAY, metadata=GLOBEX)
    assert await values_at(tagging_stub, member_id, name, as_of=now - 35 * DAY, metadata=GLOBEX) == ["none"]

    before_order = dt.datetime.now(dt.UTC)
    await record_order(tagging_stub, an_order(member_id, paid_time=stamp(now - 40 * DAY)), GLOBEX)
    assert await values_at(tagging_stub, member_id, name, metadata=GLOBEX) == ["buyer"]

    async def corrected() -> bool:
        return await values_at(tagging_stub, member_id, name, as_of=now - 35 * DAY, metadata=GLOBEX) == [
            "buyer"
        ]

    await eventually(corrected, "corrected the history from the order's paid time on")
    assert await history(db, member_id, name, TENANT_GLOBEX) == [
        ("none", now - 50 * DAY, now - 40 * DAY),
        ("buyer", now - 40 * DAY, None),
    ]
    assert await values_at(tagging_stub, member_id, name, as_of=now - 45 * DAY, metadata=GLOBEX) == ["none"]
    # What was believed before the order arrived, about 35 days ago and about then.
    assert await values_at(
        tagging_stub, member_id, name, now - 35 * DAY, known_at=before_order, metadata=GLOBEX
    ) == ["none"]
    assert await values_at(tagging_stub, member_id, name, known_at=before_order, metadata=GLOBEX) == ["none"]

    current = await changes(tagging_stub, member_id, name, include_superseded=False, metadata=GLOBEX)
    assert [(c.value, c.HasField("supersede_time")) for c in current] == [("none", False), ("buyer", False)]
    assert all(c.HasField("record_time") and c.record_time.ToDatetime(dt.UTC) > before_order for c in current)
    every = await changes(tagging_stub, member_id, name, include_superseded=True, metadata=GLOBEX)
    replaced = [c for c in every if c.HasField("supersede_time")]
    assert len(every) == len(current) + len(replaced) and replaced
    assert all(c.record_time.ToDatetime(dt.UTC) < c.supersede_time.ToDatetime(dt.UTC) for c in replaced)
    # The belief the correction replaced: "none" from 50 days ago until the order's refresh.
    assert any(c.value == "none" and c.valid_from.ToDatetime(dt.UTC) == now - 50 * DAY for c in replaced)


async def scheduled_buyer(stub: Stub) -> tuple[str, str]:
    """A new scheduled dimension (orders in 10 days) and a new member."""
    name = dimension()
    await create(stub, buyer(name, 10, tags_pb2.REFRESH_POLICY_SCHEDULED))
    return name, await new_member(stub)


async def test_recomputing_at_daily_instants_writes_the_sampled_history_and_a_recompute_now_keeps_it(
    tagging_stub: Stub, db: Database
) -> None:
    name, member_id = await scheduled_buyer(tagging_stub)
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - 30 * DAY
    for day in (2, 5, 20):
        await record_order(
            tagging_stub, an_order(member_id, paid_time=stamp(start + day * DAY + dt.timedelta(hours=1)))
        )
    await recompute(tagging_stub, name)  # holds now: the order of day 20 is in the 10-day window
    assert await values_at(tagging_stub, member_id, name) == ["buyer"]
    for day in range(26):
        await recompute(tagging_stub, name, as_of=start + day * DAY)

    # Orders in (t - 10 days, t]: none before day 3, one from day 3, two from day 6 (until day 2's
    # leaves on day 13), one from day 13, none from day 16, one from day 21 until now.
    at = [start + day * DAY for day in (0, 3, 6, 13, 16, 21)]
    expected = [
        ("none", at[0], at[1]),
        ("buyer", at[1], at[2]),
        ("regular", at[2], at[3]),
        ("buyer", at[3], at[4]),
        ("none", at[4], at[5]),
        ("buyer", at[5], None),
    ]
    assert await history(db, member_id, name) == expected
    for day, value in [
        (0, "none"),
        (4, "buyer"),
        (12, "regular"),
        (15, "buyer"),
        (20, "none"),
        (25, "buyer"),
    ]:
        assert await values_at(
            tagging_stub, member_id, name, as_of=start + day * DAY + dt.timedelta(hours=2)
        ) == [value]

    # Redone, the same instants change nothing; a recompute now neither changes nor archives the past.
    archived = await superseded(db, name)
    assert await recompute(tagging_stub, name, as_of=start + 13 * DAY) == (0, 0)
    await recompute(tagging_stub, name)
    assert await history(db, member_id, name) == expected
    assert await superseded(db, name) == archived


async def test_a_recompute_closes_forward_in_place_and_archives_nothing(
    tagging_stub: Stub, db: Database
) -> None:
    name, member_id = await scheduled_buyer(tagging_stub)
    now = dt.datetime.now(dt.UTC)
    await record_order(tagging_stub, an_order(member_id, paid_time=stamp(now - DAY)))
    await recompute(tagging_stub, name)
    await record_order(tagging_stub, an_order(member_id, paid_time=stamp(now - dt.timedelta(hours=2))))
    assert await recompute(tagging_stub, name) == (1, 1)
    assert [v for v, _, _ in await history(db, member_id, name)] == ["buyer", "regular"]
    assert await superseded(db, name) == 0


@pytest.mark.parametrize("ahead", [dt.timedelta(hours=1), dt.timedelta(days=-365 * 40)])
async def test_as_of_must_be_in_the_past_and_known_at_not_in_the_future(
    tagging_stub: Stub, ahead: dt.timedelta
) -> None:
    at = stamp(dt.datetime.now(dt.UTC) + ahead)
    error = await failure(
        tagging_stub.RecomputeTags(tagging_service_pb2.RecomputeTagsRequest(as_of=at), metadata=ACME)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(field_violations(error)) == ["as_of"]
    if ahead > dt.timedelta(0):
        member_id = await new_member(tagging_stub)
        request = tagging_service_pb2.GetMemberTagsRequest(member=f"members/{member_id}", known_at=at)
        error = await failure(tagging_stub.GetMemberTags(request, metadata=ACME))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert list(field_violations(error)) == ["known_at"]


async def test_a_multi_valued_dimension_keeps_a_history_per_value(tagging_stub: Stub, db: Database) -> None:
    name = dimension()

    def bought(category: str) -> tags_pb2.TagValue:
        count = agg(Fn.AGGREGATE_FUNCTION_ORDER_COUNT, window_days=10, categories=[category])
        return tags_pb2.TagValue(value=category, rule=cond(count, Op.OPERATOR_GT, 0))

    definition = tags_pb2.TagDefinition(
        dimension=name,
        display_name="Bought lately",
        category=tags_pb2.TAG_CATEGORY_CONSUMPTION,
        kind=tags_pb2.TAG_KIND_RULE,
        refresh_policy=tags_pb2.REFRESH_POLICY_SCHEDULED,
        cardinality=tags_pb2.CARDINALITY_MULTI,
        values=[bought("skincare"), bought("shoes")],
    )
    await create(tagging_stub, definition)
    member_id = await new_member(tagging_stub)
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - 30 * DAY
    hour = dt.timedelta(hours=1)
    await record_order(tagging_stub, an_order(member_id, paid_time=stamp(start + 2 * DAY + hour)))
    shoes = facts_pb2.OrderLine(
        line_id="1", sku="sku-9", category="shoes", brand="acme", quantity=1, unit_price_minor=5_000
    )
    await record_order(
        tagging_stub,
        an_order(member_id, paid_time=stamp(start + 5 * DAY + hour), amount_minor=5_000, lines=[shoes]),
    )
    for day in range(21):
        await recompute(tagging_stub, name, as_of=start + day * DAY)
    # skincare bought on day 2 (with makeup, not a value here), shoes on day 5; each counts 10 days.
    assert sorted(await history(db, member_id, name)) == [
        ("shoes", start + 6 * DAY, start + 16 * DAY),
        ("skincare", start + 3 * DAY, start + 13 * DAY),
    ]
    assert sorted(await values_at(tagging_stub, member_id, name, as_of=start + 7 * DAY)) == [
        "shoes",
        "skincare",
    ]
