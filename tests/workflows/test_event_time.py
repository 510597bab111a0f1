"""Facts happen at their own time (issue 19): history loaded through RecordOrder enrols nobody and
converts nobody while a fresh first order still enrols at once; a goal counts only when its fact
happened inside [enrolment, enrolment + attribution], for member journeys and cohorts alike.

The dispatcher test runs on the dev server against the real services (the feeds follow wall-clock
time); the window tests on the time-skipping server. Every wait is for a state, with a deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from typing import Any

from memberops.audience.v1 import audience_pb2, audience_service_pb2, audience_service_pb2_grpc
from memberops.tagging.v1 import facts_pb2, tagging_service_pb2, tagging_service_pb2_grpc, tags_pb2
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from runtime import outbox
from runtime.config import Settings
from runtime.db import Database
from tests.audience.helpers import all_of, fact, in_batch, order_count
from tests.conftest import ACME, TENANT_ACME, unique
from tests.tagging.facts_helpers import stamp
from tests.tagging.rule_builders import ALWAYS, Fn, Op, agg, cond
from tests.tagging.test_catalog import create, dimension
from tests.tagging.test_feed import feed_end
from tests.waiting import eventually
from tests.workflows.cohort_helpers import broadcast, snapshot_population, until_asleep
from tests.workflows.cohort_helpers import start as start_cohort
from tests.workflows.journey_helpers import activate, journey, member_message, running, seed_member, start
from tests.workflows.test_dispatcher import _state, dispatcher, enrolled, following
from workflows.dispatcher.payloads import DispatcherStatus
from workflows.dispatcher.workflow import DispatcherWorkflow
from workflows.journeys import client, store
from workflows.journeys.cohort.payloads import CohortEvent
from workflows.journeys.cohort.workflow import CohortJourneyWorkflow
from workflows.journeys.definition import AudienceEntry, Entry, EventMatch, Goal, Send, Step, Wait
from workflows.journeys.payloads import Funnel, MemberEvent
from workflows.journeys.shipped import NEW_CUSTOMER, WIN_BACK
from workflows.journeys.workflow import JourneyWorkflow
from workflows.worker import Resources

# The CDNOW-style load: members registered long ago, each with orders paid 5 to 23 months ago.
LOADED = 240
NOW = dt.datetime.now(dt.UTC)


def history_of(n: int) -> list[dt.datetime]:
    """Member n's 1-3 orders, paid between 150 and 700 days ago, oldest first."""
    return sorted(NOW - dt.timedelta(days=700 - 37 * ((n * 7 + k * 131) % 15)) for k in range(1 + n % 3))


def buyer_dimension(name: str) -> tags_pb2.TagDefinition:
    """A real-time tag every member with an order has: each load's first order changes it."""
    return tags_pb2.TagDefinition(
        dimension=name,
        display_name="Has bought",
        category=tags_pb2.TAG_CATEGORY_TRANSACTION,
        kind=tags_pb2.TAG_KIND_RULE,
        refresh_policy=tags_pb2.REFRESH_POLICY_REAL_TIME,
        cardinality=tags_pb2.CARDINALITY_SINGLE,
        values=[
            tags_pb2.TagValue(
                value="buyer", rule=cond(agg(Fn.AGGREGATE_FUNCTION_ORDER_COUNT), Op.OPERATOR_GE, 1)
            ),
            tags_pb2.TagValue(value="none", rule=ALWAYS),
        ],
    )


async def register(
    tagging: tagging_service_pb2_grpc.TaggingServiceAsyncStub, member_id: str, batch: str, since: dt.datetime
) -> None:
    member = member_message(member_id)
    member.attributes.update({"batch": batch})
    member.profile.register_time.FromDatetime(since)
    await tagging.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=member), metadata=ACME)


async def pay(
    tagging: tagging_service_pb2_grpc.TaggingServiceAsyncStub, member_id: str, paid: dt.datetime, amount: int
) -> None:
    line = facts_pb2.OrderLine(line_id="1", sku="tea-1", category="tea", quantity=1, unit_price_minor=amount)
    order = facts_pb2.Order(
        order_id=unique("o"), member_id=member_id, paid_time=stamp(paid), amount_minor=amount, lines=[line]
    )
    await tagging.RecordOrder(tagging_service_pb2.RecordOrderRequest(order=order), metadata=ACME)


async def load_history(tagging: tagging_service_pb2_grpc.TaggingServiceAsyncStub, batch: str) -> list[str]:
    """LOADED members, registered two years ago, and their orders, recorded through RecordOrder as a
    history import would (members at once, each member's orders in turn)."""
    ids = [f"{batch}-{n:04d}" for n in range(LOADED)]

    async def one(n: int, member_id: str) -> None:
        await register(tagging, member_id, batch, NOW - dt.timedelta(days=730))
        for paid in history_of(n):
            await pay(tagging, member_id, paid, 5_000 + n)

    for start_at in range(0, LOADED, 40):
        await asyncio.gather(*(one(n, ids[n]) for n in range(start_at, min(LOADED, start_at + 40))))
    return ids


async def feed_ends(resources: Resources) -> dict[str, outbox.Position | None]:
    """Where the tagging and audience feeds end now; the tagging feed's end past every entry
    committed before the call (its settled end can lie before a tag change committed just now)."""
    tagging_end = await feed_end(tagging_service_pb2_grpc.TaggingServiceStub(resources.tagging))
    audience_end = (
        await audience_service_pb2_grpc.AudienceServiceStub(resources.audience).ReadAudienceFeed(
            audience_service_pb2.ReadAudienceFeedRequest(skip_to_end=True), metadata=ACME
        )
    ).next_cursor
    return {"tagging": outbox.parse_cursor(tagging_end), "audience": outbox.parse_cursor(audience_end)}


async def status_past(
    handle: WorkflowHandle[DispatcherWorkflow, None], ends: dict[str, outbox.Position | None]
) -> DispatcherStatus:
    """The dispatcher's status once the rounds it counts have read both feeds to `ends`: its totals
    then hold everything those entries did (the cursors the status shows and its totals are
    updated together, when a round returns; the stored cursors may run ahead of them)."""

    async def there() -> DispatcherStatus | None:
        status: DispatcherStatus = await handle.query(DispatcherWorkflow.status)
        read = {"tagging": status.tagging_cursor, "audience": status.audience_cursor}
        passed = all(
            end is None or (outbox.parse_cursor(read[feed]) or (0, 0)) >= end for feed, end in ends.items()
        )
        return status if passed else None

    return await eventually(there, "the dispatcher's rounds past the feeds' ends")


async def audience_entries(resources: Resources, audience_id: str, count: int) -> None:
    """Waits until the audience's feed holds `count` entries: the maintainer has written what the
    load made it write."""
    stub = audience_service_pb2_grpc.AudienceServiceStub(resources.audience)

    async def written() -> bool:
        seen, cursor = 0, ""
        while True:
            page = await stub.ReadAudienceFeed(
                audience_service_pb2.ReadAudienceFeedRequest(
                    after_cursor=cursor, limit=1000, audience=f"audiences/{audience_id}"
                ),
                metadata=ACME,
            )
            seen += len(page.entries)
            if not page.entries:
                return seen >= count
            cursor = page.next_cursor

    await eventually(written, f"{count} entries of audience {audience_id}")


async def rows_of(db: Database, sql: str, *args: Any) -> list[dict[str, Any]]:
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        return [dict(row) for row in await conn.fetch(sql, *args)]


async def test_loaded_history_enrols_and_converts_nobody_and_a_fresh_first_order_enrols(
    dev_server_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    tagging = tagging_service_pb2_grpc.TaggingServiceStub(resources.tagging)
    audiences = audience_service_pb2_grpc.AudienceServiceStub(resources.audience)
    batch = unique("cdnow")
    # Win-back's audience: the batch's buyers, kept current from tagging's feed.
    created = await audiences.CreateAudience(
        audience_service_pb2.CreateAudienceRequest(
            audience=audience_pb2.Audience(
                audience_id=unique("win-back"),
                rule=all_of(in_batch(batch), fact(order_count(), Op.OPERATOR_GE, 1)),
                dynamic=True,
            )
        ),
        metadata=ACME,
    )
    tag = dimension()
    await create(tagging, buyer_dimension(tag))
    new_customer = dataclasses.replace(NEW_CUSTOMER, key=unique("new-customer"))
    win_back = dataclasses.replace(
        WIN_BACK, key=unique("win-back"), entry=Entry(audience=AudienceEntry(audience=created.audience_id))
    )
    tagged = journey(
        Step(id="hello", send=Send(template="hello")),
        entry=Entry(event=EventMatch(kind="tag_added", dimension=tag, values=("buyer",))),
    )
    journeys = (new_customer, win_back, tagged)
    for definition in journeys:
        await store.put_definition(journeys_db, TENANT_ACME, definition)
        await activate(journeys_db, TENANT_ACME, definition.key)
    keys = [d.key for d in journeys]
    fresh = f"{batch}-fresh"
    async with (
        running(dev_server_env, worker_settings, resources),
        dispatcher(dev_server_env, worker_settings, journeys_db, *keys) as d,
    ):
        await following(journeys_db, d.id)
        loaded = await load_history(tagging, batch)
        # A new customer today: registered and buying now.
        await register(tagging, fresh, batch, dt.datetime.now(dt.UTC))
        await pay(tagging, fresh, dt.datetime.now(dt.UTC), 9_800)
        for definition in journeys:
            await enrolled(journeys_db, definition.key, fresh)
        handle = dev_server_env.client.get_workflow_handle_for(
            JourneyWorkflow.run, client.workflow_id(TENANT_ACME, new_customer.key, fresh)
        )
        await eventually(lambda: _state(handle, "active"), "the new customer active")
        # An order of the fresh member's history arrives after it entered: no conversion.
        await pay(tagging, fresh, NOW - dt.timedelta(days=200), 4_400)
        # Positive conditions first: the audience maintainer wrote every entry the load made (one
        # per member), and the dispatcher's counted rounds read both feeds to where they end after
        # that; only then can the negative checks below not run ahead of a wrong enrolment.
        await audience_entries(resources, created.audience_id, LOADED + 1)
        status = await status_past(d, await feed_ends(resources))
        funnel: Funnel = await handle.query(JourneyWorkflow.funnel)
    assert (funnel.state, funnel.converted, funnel.gmv_minor) == ("active", False, 0)
    # The fresh member entered each journey; each loaded member's first order, buyer tag and
    # audience entry were history: too old for its journey, one each.
    assert (status.totals.started, status.totals.too_old) == (len(journeys), 3 * LOADED)
    assert await rows_of(
        journeys_db,
        """SELECT journey_key, member_id FROM journeys.enrolments
               WHERE tenant_id = $1 AND journey_key = ANY($2::text[])
                 AND (member_id = ANY($3::text[]) OR member_id = $4)
               ORDER BY journey_key""",
        TENANT_ACME,
        keys,
        loaded,
        fresh,
    ) == sorted(({"journey_key": key, "member_id": fresh} for key in keys), key=lambda r: r["journey_key"])
    assert (
        await rows_of(
            journeys_db,
            "SELECT member_id FROM journeys.messages WHERE tenant_id = $1 AND member_id = ANY($2::text[])",
            TENANT_ACME,
            loaded,
        )
        == []
    )


async def test_a_member_goal_counts_only_when_its_fact_happened_inside_the_window(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    member_id = unique()
    await seed_member(resources.tagging, member_id)
    definition = journey(
        Step(id="wait-30d", wait=Wait(duration="30d")),
        goal=Goal(event=EventMatch(kind="order"), attribution="14d"),
    )
    async with running(time_skipping_env, worker_settings, resources):
        handle = await start(time_skipping_env, worker_settings, journeys_db, definition, member_id)
        active = await eventually(lambda: _state(handle, "active"), "the member active")
        assert active.enter_time is not None
        entered = active.enter_time
        for n, happened in enumerate(
            (
                entered - dt.timedelta(hours=1),  # paid before the member entered
                entered + dt.timedelta(days=14, hours=1),  # after the attribution window
                entered + dt.timedelta(hours=1),  # inside: the conversion
            )
        ):
            event = MemberEvent(
                kind="order", subject_id=f"o-{n}", amount_minor=100 * (n + 1), occur_time=happened
            )
            await handle.signal(JourneyWorkflow.event, event)
        funnel = await handle.result()
    assert (funnel.state, funnel.converted, funnel.gmv_minor) == ("converted", True, 300)
    assert funnel.convert_time == entered + dt.timedelta(hours=1)


async def test_a_cohort_goal_counts_only_when_its_fact_happened_inside_the_window(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    ids, audience_id, frozen = await snapshot_population(resources, 3)
    definition = broadcast(
        audience_id,
        Step(id="wait-30d", wait=Wait(duration="30d")),
        goal=Goal(event=EventMatch(kind="order"), attribution="14d"),
    )
    async with running(time_skipping_env, worker_settings, resources):
        handle = await start_cohort(time_skipping_env, worker_settings, journeys_db, definition, frozen.name)
        await until_asleep(handle, "the 30-day wait")
        cohort_id = (await handle.query(CohortJourneyWorkflow.funnel)).cohort_id
        entered = {
            row["member_id"]: row["enter_time"]
            for row in await rows_of(
                journeys_db,
                """SELECT member_id, enter_time FROM journeys.cohort_members
                   WHERE tenant_id = $1 AND cohort_id = $2""",
                TENANT_ACME,
                cohort_id,
            )
        }
        before, after, inside = ids
        for n, (member_id, happened) in enumerate(
            (
                (before, entered[before] - dt.timedelta(hours=1)),
                (after, entered[after] + dt.timedelta(days=14, hours=1)),
                (inside, entered[inside] + dt.timedelta(hours=1)),
            )
        ):
            event = MemberEvent(
                kind="order", subject_id=f"o-{n}", amount_minor=1_000 + n, occur_time=happened
            )
            await handle.signal(CohortJourneyWorkflow.event, CohortEvent(member_id, event))
        funnel = await handle.result()
    states = {
        row["member_id"]: (row["state"], row["gmv_minor"], row["convert_time"])
        for row in await rows_of(
            journeys_db,
            """SELECT member_id, state, gmv_minor, convert_time FROM journeys.cohort_members
               WHERE tenant_id = $1 AND cohort_id = $2""",
            TENANT_ACME,
            cohort_id,
        )
    }
    assert states == {
        before: ("completed", 0, None),
        after: ("completed", 0, None),
        inside: ("converted", 1_002, entered[inside] + dt.timedelta(hours=1)),
    }
    assert funnel.treated.converted + funnel.holdout.converted == 1
