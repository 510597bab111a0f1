"""The report command over journeys run on the time-skipping server: its figures are what the
enrolments and the message log hold, treated against holdout, with the uplift."""

from __future__ import annotations

import json
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from runtime.config import Settings
from runtime.db import Database
from tests.conftest import TENANT_ACME
from tests.waiting import eventually
from tests.workflows.journey_helpers import journey, member_in, running, seed_member, start
from workflows.journeys import report
from workflows.journeys.definition import EventMatch, Goal, Send, Step, Template, Wait
from workflows.journeys.payloads import MemberEvent
from workflows.journeys.workflow import JourneyWorkflow
from workflows.worker import Resources


async def logged(db: Database, journey_key: str) -> dict[tuple[str, str], int]:
    """(arm, step) -> messages sent, straight from the message log and the enrolments."""
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        rows = await conn.fetch(
            """SELECT e.arm, m.step_id, count(*) AS n FROM journeys.messages m
               JOIN journeys.enrolments e ON e.tenant_id = m.tenant_id AND e.member_id = m.member_id
                AND m.journey_run = e.workflow_id || '#' || e.entry_number
               WHERE m.tenant_id = $1 AND m.journey_key = $2 AND m.status = 'sent' GROUP BY 1, 2""",
            TENANT_ACME,
            journey_key,
        )
    return {(row["arm"], row["step_id"]): row["n"] for row in rows}


async def test_the_report_gives_what_the_enrolments_and_the_message_log_hold(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    capsys: pytest.CaptureFixture[str],
) -> None:
    definition = journey(
        Step(id="offer", send=Send(template="hello")),
        Step(id="wait-1d", wait=Wait(duration="1d")),
        Step(id="nudge", send=Send(template="nudge")),
        holdout_percent=50,
        goal=Goal(event=EventMatch(kind="order"), attribution="3d"),
        templates={
            "hello": Template(subject="Hello", body="Hi {nickname}."),
            "nudge": Template(subject="Still there?", body="Hi {nickname}, 10 off today."),
        },
    )
    treated = [member_in(definition, holdout=False) for _ in range(4)]
    held = [member_in(definition, holdout=True) for _ in range(3)]
    # Orders while the member waits its day: two treated members and one holdout member convert.
    orders = {treated[0]: 10_000, treated[1]: 2_550, held[0]: 4_000}
    for member_id in treated + held:
        await seed_member(resources.tagging, member_id)
    async with running(time_skipping_env, worker_settings, resources):
        handles = {
            member_id: await start(time_skipping_env, worker_settings, journeys_db, definition, member_id)
            for member_id in treated + held
        }
        for member_id, amount in orders.items():
            handle = handles[member_id]

            async def waiting(handle: Any = handle) -> bool:
                return bool((await handle.query(JourneyWorkflow.funnel)).current_step == "wait-1d")

            await eventually(waiting, f"did {member_id} get to wait-1d")
            await handle.signal(JourneyWorkflow.event, MemberEvent(kind="order", amount_minor=amount))
        funnels = {member_id: await handle.result() for member_id, handle in handles.items()}

    capsys.readouterr()
    assert (
        await report.run(["--tenant", TENANT_ACME, "--journey", definition.key, "--json"], worker_settings)
        == 0
    )
    shown = json.loads(capsys.readouterr().out)
    sent = await logged(journeys_db, definition.key)
    for arm, members in (("treated", treated), ("holdout", held)):
        figures = shown[arm]
        assert figures["entered"] == len(members) and figures["active"] == 0
        assert (
            figures["converted"]
            == sum(funnels[m].converted for m in members)
            == len(orders.keys() & set(members))
        )
        assert figures["gmv_minor"] == sum(orders.get(m, 0) for m in members)
        for step in ("offer", "nudge"):
            assert figures["messages"].get(step, {}).get("sent", 0) == sent.get((arm, step), 0)
    # Every treated member got the offer; only those who had not ordered got the nudge; no holdout
    # member got anything.
    assert (sent[("treated", "offer")], sent[("treated", "nudge")]) == (4, 2)
    assert not any(arm == "holdout" for arm, _ in sent)
    assert shown["treated"]["conversion_rate"] == 0.5 and shown["holdout"]["conversion_rate"] == 1 / 3
    assert shown["uplift_points"] == pytest.approx(100 / 6) and shown["uplift_relative"] == pytest.approx(0.5)
    assert shown["send_steps"] == ["offer", "nudge"]

    assert await report.run(["--tenant", TENANT_ACME, "--journey", definition.key], worker_settings) == 0
    table = capsys.readouterr().out
    assert "sent nudge" in table and "uplift: +16.67 percentage points; relative +50.0%" in table
    assert await report.run(["--tenant", TENANT_ACME, "--journey", "no-such-journey"], worker_settings) == 1
