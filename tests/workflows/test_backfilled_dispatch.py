"""Back-filled facts (issue 20): history loaded by ImportOrders enrols nobody and converts nobody,
however recent its facts' time, by an order, by a tag change the import's refresh made or by the
dynamic audience it moved the member into, while the same orders recorded live through RecordOrder
do. The dispatcher counts what it left alone as `backfilled`.

The dispatcher test runs on the dev server against the real services. "Nothing happened" is
proved with barriers: live orders recorded after the import, whose enrolments and conversion are
waited for, and the dispatcher's counted rounds past both feeds' ends after them.
"""

from __future__ import annotations

import datetime as dt

from memberops.audience.v1 import audience_service_pb2_grpc
from memberops.tagging.v1 import tagging_service_pb2_grpc
from temporalio.testing import WorkflowEnvironment

from runtime.config import Settings
from runtime.db import Database
from tests.audience.helpers import all_of, fact, in_batch, order_count
from tests.audience.test_dynamic import create_dynamic
from tests.backfill_helpers import import_orders, paid_order
from tests.conftest import ACME, TENANT_ACME, unique
from tests.tagging.rule_builders import Op
from tests.tagging.test_catalog import create, dimension
from tests.waiting import eventually
from tests.workflows.journey_helpers import activate, journey, running, seed_member
from tests.workflows.test_dispatch_events import order_entry
from tests.workflows.test_dispatcher import _state, dispatcher, enrolled, enrolments, following, record_order
from tests.workflows.test_event_time import buyer_dimension, feed_ends, status_past
from workflows.dispatcher import events
from workflows.journeys import client, store
from workflows.journeys.definition import AudienceEntry, Entry, EventMatch, Goal, Send, Step, Wait
from workflows.journeys.shipped import NEW_CUSTOMER
from workflows.journeys.workflow import JourneyWorkflow
from workflows.worker import Resources

MINUTE = dt.timedelta(minutes=1)


def test_a_backfilled_entry_is_an_event_marked_as_history() -> None:
    live = events.tagging_event(order_entry("10-1", 1))
    imported = order_entry("11-1", 1)
    imported.backfilled = True
    history = events.tagging_event(imported)
    assert live is not None and history is not None
    assert (live.backfilled, history.backfilled) == (False, True)
    # Its kind is what it would be live: only the mark keeps it from enrolling.
    assert events.enters(NEW_CUSTOMER, history.event)


async def test_imported_orders_enrol_and_convert_nobody_while_live_orders_do(
    dev_server_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    tagging = tagging_service_pb2_grpc.TaggingServiceStub(resources.tagging)
    tag = dimension()
    await create(tagging, buyer_dimension(tag))
    ordered = journey(
        Step(id="wait-30d", wait=Wait(duration="30d")),
        entry=Entry(event=EventMatch(kind="first_order")),
        goal=Goal(event=EventMatch(kind="order"), attribution="14d"),
    )
    tagged = journey(
        Step(id="hello", send=Send(template="hello")),
        entry=Entry(event=EventMatch(kind="tag_added", dimension=tag, values=("buyer",))),
    )
    batch = unique("batch")
    audience = audience_service_pb2_grpc.AudienceServiceStub(resources.audience)
    buyers = await create_dynamic(audience, all_of(in_batch(batch), fact(order_count(), Op.OPERATOR_GE, 1)))
    audienced = journey(
        Step(id="hello", send=Send(template="hello")),
        entry=Entry(audience=AudienceEntry(audience=buyers)),
    )
    journeys = (ordered, tagged, audienced)
    for definition in journeys:
        await store.put_definition(journeys_db, TENANT_ACME, definition)
        await activate(journeys_db, TENANT_ACME, definition.key)
    history, fresh, buyer = unique("history"), unique("fresh"), unique("buyer")
    for member_id in (history, fresh, buyer):
        await seed_member(resources.tagging, member_id, attributes={"batch": batch})
    async with (
        running(dev_server_env, worker_settings, resources),
        dispatcher(dev_server_env, worker_settings, journeys_db, *(j.key for j in journeys)) as d,
    ):
        await following(journeys_db, d.id)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        # A live first order: `fresh` enters every journey.
        await record_order(resources, fresh, 1_000, now - 30 * MINUTE)
        await enrolled(journeys_db, ordered.key, fresh)
        handle = dev_server_env.client.get_workflow_handle_for(
            JourneyWorkflow.run, client.workflow_id(TENANT_ACME, ordered.key, fresh)
        )
        await eventually(lambda: _state(handle, "active"), "the fresh member active")
        # The audience maintainer has followed the members' live registrations (fresh's order, which
        # moved it into the audience, comes after them on the feed), so `history`'s imported entries
        # reach it in a later round of their own. A round that takes a member's live registration and
        # its imported order together counts the entry as news (decision 106).
        await enrolled(journeys_db, audienced.key, fresh)
        # History whose time alone would be news: `history`'s first order (which also makes it a
        # buyer), and an order of `fresh` inside its goal window.
        await import_orders(
            tagging,
            [paid_order(history, 4_400, now - 10 * MINUTE), paid_order(fresh, 5_500, now - 20 * MINUTE)],
            ACME,
        )
        # The same kinds of fact recorded live: `buyer` enters every journey, `fresh` converts.
        await record_order(resources, buyer, 2_000)
        await record_order(resources, fresh, 9_800)
        for definition in journeys:
            await enrolled(journeys_db, definition.key, buyer)
        funnel = await handle.result()
        status = await status_past(d, await feed_ends(resources))
    # Converted by the live order: the imported one, earlier and inside the window, converted nobody.
    assert (funnel.state, funnel.converted, funnel.gmv_minor) == ("converted", True, 9_800)
    for definition in journeys:
        assert await enrolments(journeys_db, definition.key, history) == []
    # Left alone: history's first order, buyer tag and audience entry (one entry each), and fresh's
    # imported order.
    assert (status.totals.backfilled, status.totals.too_old) == (4, 0)
    assert status.totals.started == 6  # fresh and buyer, each into every journey
