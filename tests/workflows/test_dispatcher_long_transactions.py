"""The dispatcher while a long transaction is open (issue 25): a first order recorded while another
transaction holds a txid (an analyst's UPDATE, a recompute lane) enrols the member into
new-customer before that transaction ends, and once. Under the first feed contract the order's
entry waited for the transaction to end."""

from __future__ import annotations

from temporalio.testing import WorkflowEnvironment

from runtime.config import Settings
from runtime.db import Database
from tests.conftest import TENANT_ACME, unique
from tests.workflows.journey_helpers import activate, running, seed_member
from tests.workflows.test_dispatcher import dispatcher, enrolled, enrolments, following, record_order
from workflows.journeys import store
from workflows.journeys.shipped import NEW_CUSTOMER
from workflows.worker import Resources


async def test_a_first_order_enrols_while_an_unrelated_transaction_stays_open(
    dev_server_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    await store.put_definition(journeys_db, TENANT_ACME, NEW_CUSTOMER)
    await activate(journeys_db, TENANT_ACME, NEW_CUSTOMER.key)
    member_id = unique()
    await seed_member(resources.tagging, member_id)
    async with (
        running(dev_server_env, worker_settings, resources),
        dispatcher(dev_server_env, worker_settings, journeys_db, NEW_CUSTOMER.key) as d,
    ):
        await following(journeys_db, d.id)
        async with journeys_db.pool.acquire() as long, long.transaction():
            await long.execute("CREATE TEMP TABLE long_writer (n int) ON COMMIT DROP")
            await long.execute("INSERT INTO long_writer VALUES (1)")
            assert await long.fetchval("SELECT pg_current_xact_id_if_assigned() IS NOT NULL")
            await record_order(resources, member_id, 9_800)
            (entered,) = await enrolled(journeys_db, NEW_CUSTOMER.key, member_id)
        assert entered["entry_event_id"].startswith("tagging:")
    assert len(await enrolments(journeys_db, NEW_CUSTOMER.key, member_id)) == 1
