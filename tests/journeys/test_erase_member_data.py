"""EraseMemberData in the journeys service: the member's running journey is terminated, and its
enrolment, dispatch, message log and cohort rows move to the pseudonym with what was personal in
them gone; nothing in the schema names the member afterwards, a repeat changes nothing, duplicates
racing have one effect, and bad requests name their field. The text the member was sent (it names
them) becomes `[erased]`.

The run is a real member run on the Temporal dev server (the one the journeys service talks to),
on a worker of the test's own task queue, sending a message and then waiting a day."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from memberops.journeys.v1 import journeys_service_pb2
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from runtime.config import Settings
from runtime.db import Database
from services.journeys import erasure_store
from tests.conftest import ACME, TENANT_ACME, unique
from tests.erasure_helpers import member_tables, pseudonym, row, rows_naming, value
from tests.grpc_helpers import bad
from tests.waiting import eventually
from tests.workflows import conftest as workflow_fixtures
from tests.workflows.journey_helpers import journey, member_in, running, seed_member, start
from workflows.journeys import store
from workflows.journeys.definition import Send, Step, Wait
from workflows.journeys.workflow import JourneyWorkflow
from workflows.worker import Resources

if TYPE_CHECKING:
    from memberops.journeys.v1.journeys_service_pb2_grpc import JourneyServiceAsyncStub as Stub

# The worker's fixtures (tests/workflows/conftest.py), for a member run on a worker of this test's.
channel_settings = workflow_fixtures.channel_settings
journeys_db = workflow_fixtures.journeys_db
mailbox = workflow_fixtures.mailbox
provider = workflow_fixtures.provider
resources = workflow_fixtures.resources
worker_settings = workflow_fixtures.worker_settings

STEPS = (Step(id="hello", send=Send(template="hello")), Step(id="wait-1d", wait=Wait(duration="1d")))


# A member the cohort's batch claimed beside the erased one.
OTHER = unique("other")


async def erase(stub: Stub, member_id: str, to: str) -> dict[str, int]:
    request = journeys_service_pb2.EraseMemberDataRequest(member_id=member_id, pseudonym=to)
    return dict((await stub.EraseMemberData(request, metadata=ACME)).changed_rows)


async def waiting(handle: WorkflowHandle[JourneyWorkflow, object]) -> bool:
    """Whether the run sent its message and waits its day."""
    funnel = await handle.query(JourneyWorkflow.funnel)
    return funnel.current_step == "wait-1d"


async def a_cohort_place(db: Database, key: str, member_id: str) -> int:
    """A broadcast cohort of the journey holding the member, active, with a batch that claimed its
    send (what a cohort writes; the cohort workflows' own tests run them)."""
    async with db.transaction(TENANT_ACME) as conn:
        cohort_id: int = await conn.fetchval(
            """INSERT INTO journeys.cohorts (tenant_id, journey_key, version, snapshot_id, workflow_id,
                                             first_run_id, start_time)
               VALUES ($1, $2, 1, $3, $4, 'run', now()) RETURNING cohort_id""",
            TENANT_ACME,
            key,
            unique("snap"),
            unique("cohort"),
        )
        await conn.execute(
            """INSERT INTO journeys.cohort_members (tenant_id, cohort_id, member_id, holdout, snapshot_arm,
                                                    due_time, enter_time)
               VALUES ($1, $2, $3, false, 'a', now(), now())""",
            TENANT_ACME,
            cohort_id,
            member_id,
        )
        claimed = {"claimed": [[member_id, 0, "sms"], [OTHER, 0, "sms"]]}
        await conn.execute(
            """INSERT INTO journeys.cohort_batches (tenant_id, cohort_id, seq, state, detail, create_time,
                                                    update_time)
               VALUES ($1, $2, 0, 'claimed', $3::jsonb, now(), now())""",
            TENANT_ACME,
            cohort_id,
            json.dumps(claimed),
        )
    return cohort_id


async def test_the_running_journey_stops_and_its_rows_move_to_the_pseudonym(
    journeys_stub: Stub,
    dev_server_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    db: Database,
) -> None:
    definition = journey(*STEPS)
    member_id = member_in(definition, holdout=False)
    nickname = unique("nick")
    await seed_member(resources.tagging, member_id, nickname=nickname)
    text = "SELECT subject, body FROM journeys.messages WHERE journey_key = $1"
    async with running(dev_server_env, worker_settings, resources):
        handle = await start(dev_server_env, worker_settings, journeys_db, definition, member_id)
        await eventually(lambda: waiting(handle), "did the member get its message and wait")
        assert await row(db, text, definition.key) == (f"Hello {nickname}", f"Hi {nickname}, welcome.")
        cohort_id = await a_cohort_place(journeys_db, definition.key, member_id)
        to = pseudonym()

        changed = await erase(journeys_stub, member_id, to)

        assert (await handle.describe()).status == WorkflowExecutionStatus.TERMINATED
    assert changed == {"enrolments": 1, "messages": 1, "cohort_members": 1, "cohort_batches": 1}
    assert await rows_naming(db, "journeys", member_id) == {}
    assert await row(
        db, "SELECT state, workflow_id FROM journeys.enrolments WHERE journey_key = $1", definition.key
    ) == ("stopped", f"journey/{TENANT_ACME}/{definition.key}/member/{to}")
    assert await row(
        db,
        "SELECT member_id, status, journey_run FROM journeys.messages WHERE journey_key = $1",
        definition.key,
    ) == (to, "sent", f"journey/{TENANT_ACME}/{definition.key}/member/{to}#1")
    assert await row(db, text, definition.key) == ("[erased]", "[erased]")
    assert await rows_naming(db, "journeys", nickname) == {}
    assert await row(
        db, "SELECT member_id, state FROM journeys.cohort_members WHERE cohort_id = $1", cohort_id
    ) == (to, "stopped")
    claims = await value(
        db, "SELECT detail->'claimed' FROM journeys.cohort_batches WHERE cohort_id = $1", cohort_id
    )
    assert json.loads(claims) == [[to, 0, "sms"], [OTHER, 0, "sms"]]
    # Nothing is left: a repeat changes nothing (the run ended, which needs nothing).
    assert await erase(journeys_stub, member_id, to) == {}


async def test_duplicate_erasures_racing_have_one_effect(
    journeys_stub: Stub, journeys_db: Database, db: Database
) -> None:
    definition = journey(*STEPS)
    await store.put_definition(journeys_db, TENANT_ACME, definition)
    member_id = unique()
    for _ in range(3):
        await a_cohort_place(journeys_db, definition.key, member_id)
    to = pseudonym()

    answers = await asyncio.gather(*(erase(journeys_stub, member_id, to) for _ in range(5)))

    assert sorted(answers, key=len) == [{}] * 4 + [{"cohort_members": 3, "cohort_batches": 3}]
    assert await rows_naming(db, "journeys", member_id) == {}


async def test_a_member_with_nothing_here_changes_nothing(journeys_stub: Stub) -> None:
    assert await erase(journeys_stub, unique("gone"), pseudonym()) == {}


async def test_bad_requests_name_their_field(journeys_stub: Stub) -> None:
    erasing = journeys_service_pb2.EraseMemberDataRequest
    for request, field in (
        (erasing(pseudonym=pseudonym()), "member_id"),
        (erasing(member_id="it's", pseudonym=pseudonym()), "member_id"),
        (erasing(member_id=unique()), "pseudonym"),
        (erasing(member_id=unique(), pseudonym="m-2"), "pseudonym"),
    ):
        await bad(journeys_stub.EraseMemberData(request, metadata=ACME), field)


async def test_every_table_with_a_member_column_is_erased(journeys_stub: Stub, db: Database) -> None:
    """(The service's fixture: its schema is migrated.)"""
    tables = await member_tables(db, "journeys")
    assert tables and tables <= {statement.table for statement in erasure_store.STATEMENTS}
