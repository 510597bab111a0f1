"""GetTagStats(as_of): the distribution a dimension had at a past moment, read from tag history (a
member whose value changed is counted under the value it held then), over the members who had
joined by then."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from memberops.tagging.v1 import member_pb2, tagging_service_pb2, tags_pb2

from runtime.db import Database
from tests.conftest import ACME, TENANT_ACME, unique
from tests.grpc_helpers import field_violations
from tests.tagging.facts_helpers import an_order, record_order, stamp
from tests.tagging.rule_builders import Fn, Op, agg, all_of, attribute, cond
from tests.tagging.test_catalog import create, dimension
from tests.tagging.test_stats import counts
from tests.tagging.test_tag_history import recompute

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub

DAY = dt.timedelta(days=1)
PROBE = "stats_probe"


def probed_buyer(name: str, probe: str) -> tags_pb2.TagDefinition:
    """Orders in 10 days (`regular` 2+, `buyer` 1, else `none`), only for members whose attribute
    `stats_probe` is `probe`: the tenant's other members (of other tests) hold nothing."""
    mine = cond(attribute(PROBE), Op.OPERATOR_EQ, probe)
    count = agg(Fn.AGGREGATE_FUNCTION_ORDER_COUNT, window_days=10)
    return tags_pb2.TagDefinition(
        dimension=name,
        category=tags_pb2.TAG_CATEGORY_TRANSACTION,
        kind=tags_pb2.TAG_KIND_RULE,
        refresh_policy=tags_pb2.REFRESH_POLICY_SCHEDULED,
        cardinality=tags_pb2.CARDINALITY_SINGLE,
        values=[
            tags_pb2.TagValue(value="regular", rule=all_of(mine, cond(count, Op.OPERATOR_GE, 2))),
            tags_pb2.TagValue(value="buyer", rule=all_of(mine, cond(count, Op.OPERATOR_GE, 1))),
            tags_pb2.TagValue(value="none", rule=mine),
        ],
    )


async def registered(stub: Stub, probe: str, at: dt.datetime) -> str:
    member_id = unique("m")
    attributes = struct_pb2.Struct()
    attributes.update({PROBE: probe})
    member = member_pb2.Member(
        member_id=member_id, profile=member_pb2.Profile(register_time=stamp(at)), attributes=attributes
    )
    await stub.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=member), metadata=ACME)
    return member_id


async def stats_at(
    stub: Stub, name: str, as_of: dt.datetime | None
) -> tagging_service_pb2.GetTagStatsResponse:
    request = tagging_service_pb2.GetTagStatsRequest(dimensions=[name])
    if as_of is not None:
        request.as_of.CopyFrom(stamp(as_of))
    return await stub.GetTagStats(request, metadata=ACME)


async def joined_by(db: Database, at: dt.datetime) -> int:
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        found: int = await conn.fetchval(
            "SELECT count(*) FROM tagging.members WHERE coalesce(register_time, create_time) <= $1", at
        )
        return found


async def test_each_week_counts_the_value_each_member_held_then(tagging_stub: Stub, db: Database) -> None:
    name, probe = dimension(), unique("probe")
    await create(tagging_stub, probed_buyer(name, probe))
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - 30 * DAY
    changing = await registered(tagging_stub, probe, start - DAY)
    for at in (start - DAY, start + 10 * DAY):  # one steadily none, one registered on day 10
        await registered(tagging_stub, probe, at)
    for day in (2, 5):
        await record_order(tagging_stub, an_order(changing, paid_time=stamp(start + day * DAY)))
    # Weekly history, as a rebuild writes it: `changing` is none, regular (2 orders in 10 days),
    # buyer, none; the steady one none throughout; the late one none once registered.
    await recompute(tagging_stub, name)
    for day in (0, 7, 14, 21):
        await recompute(tagging_stub, name, as_of=start + day * DAY)

    expected = {
        3: [("regular", 0), ("buyer", 0), ("none", 2)],
        10: [("regular", 1), ("buyer", 0), ("none", 1)],
        17: [("regular", 0), ("buyer", 1), ("none", 2)],
        24: [("regular", 0), ("buyer", 0), ("none", 3)],
    }
    for day, values in expected.items():
        at = start + day * DAY
        reply = await stats_at(tagging_stub, name, at)
        (result,) = reply.dimensions
        assert [(v, n) for v, n, _ in counts(result)] == values, f"day {day}"
        covered = sum(n for _, n in values)
        assert result.covered_count == covered
        # Members who had joined by then: the late one only from day 10 on.
        assert reply.member_count == await joined_by(db, at)
        assert result.coverage == pytest.approx(covered / reply.member_count)
    # Before any history: nothing held, yet the members who had joined count.
    (before,) = (await stats_at(tagging_stub, name, start - DAY / 2)).dimensions
    assert before.covered_count == 0 and [n for _, n, _ in counts(before)] == [0, 0, 0]
    # Unset as_of is now, from the current holdings.
    (now,) = (await stats_at(tagging_stub, name, None)).dimensions
    assert [(v, n) for v, n, _ in counts(now)] == [("regular", 0), ("buyer", 0), ("none", 3)]


@pytest.mark.parametrize(
    "as_of",
    [timestamp_pb2.Timestamp(seconds=0, nanos=-1), timestamp_pb2.Timestamp(seconds=10**12)],
    ids=["bad-nanos", "beyond-year-9999"],
)
async def test_an_invalid_moment_is_invalid_argument_naming_as_of(
    tagging_stub: Stub, as_of: timestamp_pb2.Timestamp
) -> None:
    request = tagging_service_pb2.GetTagStatsRequest(dimensions=["lifecycle"], as_of=as_of)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tagging_stub.GetTagStats(request, metadata=ACME)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == {"as_of"}


async def test_a_moment_long_ago_counts_nobody(tagging_stub: Stub) -> None:
    request = tagging_service_pb2.GetTagStatsRequest(
        dimensions=["lifecycle"], as_of=stamp(dt.datetime(1990, 1, 1, tzinfo=dt.UTC))
    )
    reply = await tagging_stub.GetTagStats(request, metadata=ACME)
    (result,) = reply.dimensions
    assert (reply.member_count, result.covered_count, result.coverage) == (0, 0, 0.0)
    assert all(v.member_count == 0 and v.share == 0.0 for v in result.values)
