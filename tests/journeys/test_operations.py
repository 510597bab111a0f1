"""JourneyService's operations on a whole journey over real gRPC: activation (refused while what a
version names is missing), pause, resume, archive, broadcasts started once per request id, and the
report. What running members do on each is the workflows' tests' (tests/workflows/test_lifecycle.py)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import grpc
import pytest
from memberops.audience.v1 import audience_service_pb2
from memberops.journeys.v1 import journey_pb2, journeys_service_pb2, report_pb2
from temporalio.testing import WorkflowEnvironment

from runtime.errors import FieldViolation
from services.journeys.journeys import Journeys
from tests.conftest import ACME, GLOBEX, JOURNEYS_TASK_QUEUE, unique
from tests.grpc_helpers import bad, failure
from tests.journeys.helpers import create, get, named, simple, update
from workflows.journeys.definition import AudienceEntry, Broadcast, Entry, JourneyDefinition
from workflows.journeys.shipped import ANNOUNCEMENT

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub
    from memberops.journeys.v1.journeys_service_pb2_grpc import JourneyServiceAsyncStub as Stub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub

State = journey_pb2.JourneyState
S = journeys_service_pb2


async def test_a_journey_goes_live_pauses_resumes_and_is_archived(journeys_stub: Stub) -> None:
    definition = simple()
    key = definition.key
    await create(journeys_stub, definition)
    await update(journeys_stub, dataclasses.replace(definition, name="Second"))
    live = await journeys_stub.ActivateJourney(
        S.ActivateJourneyRequest(name=f"journeys/{key}", version=1), metadata=ACME
    )
    assert (live.state, live.live_version, live.version, live.latest_version) == (
        State.JOURNEY_STATE_ACTIVE,
        1,
        1,
        2,
    )
    assert live.HasField("state_time")
    # Repeating it changes nothing.
    again = await journeys_stub.ActivateJourney(
        S.ActivateJourneyRequest(name=f"journeys/{key}", version=1), metadata=ACME
    )
    assert again == live
    paused = await journeys_stub.PauseJourney(S.PauseJourneyRequest(name=f"journeys/{key}"), metadata=ACME)
    assert (paused.state, paused.live_version) == (State.JOURNEY_STATE_PAUSED, 1)
    # A paused journey is resumed with its live version; activating another one is refused.
    other = await failure(
        journeys_stub.ActivateJourney(
            S.ActivateJourneyRequest(name=f"journeys/{key}", version=2), metadata=ACME
        )
    )
    assert other.code() == grpc.StatusCode.FAILED_PRECONDITION
    resumed = await journeys_stub.ResumeJourney(S.ResumeJourneyRequest(name=f"journeys/{key}"), metadata=ACME)
    assert (resumed.state, resumed.live_version) == (State.JOURNEY_STATE_ACTIVE, 1)
    latest = await journeys_stub.ActivateJourney(
        S.ActivateJourneyRequest(name=f"journeys/{key}"), metadata=ACME
    )
    assert (latest.state, latest.live_version, latest.definition.name) == (
        State.JOURNEY_STATE_ACTIVE,
        2,
        "Second",
    )
    listed = await journeys_stub.ListJourneys(
        S.ListJourneysRequest(page_size=1000, state=State.JOURNEY_STATE_ACTIVE), metadata=ACME
    )
    assert f"journeys/{key}" in {j.name for j in listed.journeys}
    archived = await journeys_stub.ArchiveJourney(
        S.ArchiveJourneyRequest(name=f"journeys/{key}", stop_running=True), metadata=ACME
    )
    assert (archived.state, archived.live_version) == (State.JOURNEY_STATE_ARCHIVED, 2)
    for call in (
        journeys_stub.ActivateJourney(S.ActivateJourneyRequest(name=f"journeys/{key}"), metadata=ACME),
        journeys_stub.ResumeJourney(S.ResumeJourneyRequest(name=f"journeys/{key}"), metadata=ACME),
        journeys_stub.PauseJourney(S.PauseJourneyRequest(name=f"journeys/{key}"), metadata=ACME),
    ):
        assert (await failure(call)).code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await get(journeys_stub, key)).state == State.JOURNEY_STATE_ARCHIVED


async def test_a_state_change_retried_by_its_request_id_answers_the_first_and_moves_nothing(
    journeys_stub: Stub,
) -> None:
    definition = simple()
    key, name = definition.key, f"journeys/{definition.key}"
    await create(journeys_stub, definition)
    activate = S.ActivateJourneyRequest(name=name, request_id=unique("req"))
    first = await journeys_stub.ActivateJourney(activate, metadata=ACME)
    assert first.live_version == 1
    # A retry after an update made version 2 the latest: version 0 meant 1, and still does.
    await update(journeys_stub, dataclasses.replace(definition, name="Second"))
    again = await journeys_stub.ActivateJourney(activate, metadata=ACME)
    assert (again.live_version, again.version, again.definition.name) == (1, 1, "Simple")
    pause = S.PauseJourneyRequest(name=name, request_id=unique("req"))
    assert (await journeys_stub.PauseJourney(pause, metadata=ACME)).state == State.JOURNEY_STATE_PAUSED
    await journeys_stub.ResumeJourney(S.ResumeJourneyRequest(name=name), metadata=ACME)
    # The pause's retry does not pause the resumed journey again.
    assert (await journeys_stub.PauseJourney(pause, metadata=ACME)).state == State.JOURNEY_STATE_ACTIVE
    assert (await get(journeys_stub, key)).live_version == 1
    reused = await failure(
        journeys_stub.ResumeJourney(
            S.ResumeJourneyRequest(name=name, request_id=pause.request_id), metadata=ACME
        )
    )
    assert reused.code() == grpc.StatusCode.ALREADY_EXISTS
    other_version = S.ActivateJourneyRequest(name=name, version=2, request_id=activate.request_id)
    assert (await failure(journeys_stub.ActivateJourney(other_version, metadata=ACME))).code() == (
        grpc.StatusCode.ALREADY_EXISTS
    )
    await bad(
        journeys_stub.ArchiveJourney(S.ArchiveJourneyRequest(name=name, request_id="x" * 129), metadata=ACME),
        "request_id",
    )
    archive = S.ArchiveJourneyRequest(name=name, request_id=unique("req"))
    archived = await journeys_stub.ArchiveJourney(archive, metadata=ACME)
    assert await journeys_stub.ArchiveJourney(archive, metadata=ACME) == archived
    assert archived.state == State.JOURNEY_STATE_ARCHIVED
    # Another tenant's call with the same id is its own.
    assert (await failure(journeys_stub.ArchiveJourney(archive, metadata=GLOBEX))).code() == (
        grpc.StatusCode.NOT_FOUND
    )


async def test_illegal_transitions_unknown_journeys_and_other_tenants(journeys_stub: Stub) -> None:
    definition = simple()
    key = definition.key
    await create(journeys_stub, definition)
    for call in (
        journeys_stub.PauseJourney(S.PauseJourneyRequest(name=f"journeys/{key}"), metadata=ACME),
        journeys_stub.ResumeJourney(S.ResumeJourneyRequest(name=f"journeys/{key}"), metadata=ACME),
    ):
        assert (await failure(call)).code() == grpc.StatusCode.FAILED_PRECONDITION
    for missing in (
        journeys_stub.ActivateJourney(
            S.ActivateJourneyRequest(name=f"journeys/{key}", version=9), metadata=ACME
        ),
        journeys_stub.ActivateJourney(S.ActivateJourneyRequest(name=f"journeys/{key}"), metadata=GLOBEX),
        journeys_stub.ArchiveJourney(S.ArchiveJourneyRequest(name=f"journeys/{key}"), metadata=GLOBEX),
        journeys_stub.PauseJourney(S.PauseJourneyRequest(name=f"journeys/{unique('none')}"), metadata=ACME),
    ):
        assert (await failure(missing)).code() == grpc.StatusCode.NOT_FOUND
    await bad(journeys_stub.ActivateJourney(S.ActivateJourneyRequest(name=key), metadata=ACME), "name")
    await bad(
        journeys_stub.ActivateJourney(
            S.ActivateJourneyRequest(name=f"journeys/{key}", version=-1), metadata=ACME
        ),
        "version",
    )
    assert (await get(journeys_stub, key)).state == State.JOURNEY_STATE_DRAFT


async def test_a_version_whose_references_broke_cannot_go_live(
    journeys_stub: Stub, tagging_stub: TaggingServiceAsyncStub, audience_stub: AudienceServiceAsyncStub
) -> None:
    names = await named(tagging_stub, audience_stub)
    definition = dataclasses.replace(
        simple(), entry=Entry(audience=AudienceEntry(audience=names.dynamic_audience))
    )
    await create(journeys_stub, definition)
    await audience_stub.DeleteAudience(
        audience_service_pb2.DeleteAudienceRequest(name=f"audiences/{names.dynamic_audience}"), metadata=ACME
    )
    error = await failure(
        journeys_stub.ActivateJourney(
            S.ActivateJourneyRequest(name=f"journeys/{definition.key}"), metadata=ACME
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "journey.entry.audience.audience" in (error.details() or "")
    assert (await get(journeys_stub, definition.key)).state == State.JOURNEY_STATE_DRAFT


async def test_activation_makes_live_the_version_whose_references_it_checked(
    journeys_stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 0 is resolved and checked, then an update stores version 2 before the state
    changes: version 2 (unchecked) does not go live; the call is ABORTED and its repeat checks 2."""
    definition = simple()
    key = definition.key
    await create(journeys_stub, definition)
    check = Journeys.broken_references
    checked: list[str] = []

    async def meanwhile(self: Journeys, tenant_id: str, d: JourneyDefinition) -> list[FieldViolation]:
        found = await check(self, tenant_id, d)
        checked.append(d.name)
        if d.key == key and len(checked) == 1:
            await update(journeys_stub, dataclasses.replace(definition, name="Second"))
        return found

    monkeypatch.setattr(Journeys, "broken_references", meanwhile)
    request = S.ActivateJourneyRequest(name=f"journeys/{key}")
    aborted = await failure(journeys_stub.ActivateJourney(request, metadata=ACME))
    assert aborted.code() == grpc.StatusCode.ABORTED
    assert (await get(journeys_stub, key)).state == State.JOURNEY_STATE_DRAFT
    live = await journeys_stub.ActivateJourney(request, metadata=ACME)
    assert (live.live_version, live.definition.name, checked) == (2, "Second", ["Simple", "Second"])


def broadcast(audience_id: str) -> JourneyDefinition:
    return dataclasses.replace(
        ANNOUNCEMENT, key=unique("bc"), entry=Entry(broadcast=Broadcast(audience=audience_id))
    )


async def created_broadcast(
    journeys_stub: Stub, tagging_stub: TaggingServiceAsyncStub, audience_stub: AudienceServiceAsyncStub
) -> JourneyDefinition:
    """A draft broadcast journey to a new static audience."""
    definition = broadcast((await named(tagging_stub, audience_stub)).static_audience)
    await create(journeys_stub, definition)
    return definition


async def test_a_broadcast_starts_once_per_request_id_and_only_while_active(
    journeys_stub: Stub,
    tagging_stub: TaggingServiceAsyncStub,
    audience_stub: AudienceServiceAsyncStub,
    dev_server_env: WorkflowEnvironment,
) -> None:
    definition = await created_broadcast(journeys_stub, tagging_stub, audience_stub)
    key = definition.key
    request = S.StartBroadcastRequest(name=f"journeys/{key}", request_id=unique("req"))
    draft = await failure(journeys_stub.StartBroadcast(request, metadata=ACME))
    assert draft.code() == grpc.StatusCode.FAILED_PRECONDITION
    await journeys_stub.ActivateJourney(S.ActivateJourneyRequest(name=f"journeys/{key}"), metadata=ACME)
    first = await journeys_stub.StartBroadcast(request, metadata=ACME)
    again = await journeys_stub.StartBroadcast(request, metadata=ACME)
    assert first == again and first.version == 1 and first.workflow_id
    description = await dev_server_env.client.get_workflow_handle(
        first.workflow_id, run_id=first.run_id
    ).describe()
    assert description.task_queue == JOURNEYS_TASK_QUEUE
    second = await journeys_stub.StartBroadcast(
        S.StartBroadcastRequest(name=f"journeys/{key}", request_id=unique("req")), metadata=ACME
    )
    assert second.workflow_id != first.workflow_id
    await bad(
        journeys_stub.StartBroadcast(S.StartBroadcastRequest(name=f"journeys/{key}"), metadata=ACME),
        "request_id",
    )

    triggered = simple()
    await create(journeys_stub, triggered)
    await journeys_stub.ActivateJourney(
        S.ActivateJourneyRequest(name=f"journeys/{triggered.key}"), metadata=ACME
    )
    not_broadcast = await failure(
        journeys_stub.StartBroadcast(
            S.StartBroadcastRequest(name=f"journeys/{triggered.key}", request_id=unique("req")), metadata=ACME
        )
    )
    assert not_broadcast.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_broadcast_retried_after_the_journey_changed_gets_its_first_answer(
    journeys_stub: Stub,
    tagging_stub: TaggingServiceAsyncStub,
    audience_stub: AudienceServiceAsyncStub,
) -> None:
    definition = await created_broadcast(journeys_stub, tagging_stub, audience_stub)
    key = definition.key
    await bad(
        journeys_stub.StartBroadcast(S.StartBroadcastRequest(name=f"journeys/{key}"), metadata=ACME),
        "request_id",
    )
    await journeys_stub.ActivateJourney(S.ActivateJourneyRequest(name=f"journeys/{key}"), metadata=ACME)
    request = S.StartBroadcastRequest(name=f"journeys/{key}", request_id=unique("req"))
    first = await journeys_stub.StartBroadcast(request, metadata=ACME)
    await update(journeys_stub, dataclasses.replace(definition, name="Second"))
    await journeys_stub.ActivateJourney(S.ActivateJourneyRequest(name=f"journeys/{key}"), metadata=ACME)
    assert await journeys_stub.StartBroadcast(request, metadata=ACME) == first
    await journeys_stub.PauseJourney(S.PauseJourneyRequest(name=f"journeys/{key}"), metadata=ACME)
    assert await journeys_stub.StartBroadcast(request, metadata=ACME) == first
    await journeys_stub.ArchiveJourney(S.ArchiveJourneyRequest(name=f"journeys/{key}"), metadata=ACME)
    assert await journeys_stub.StartBroadcast(request, metadata=ACME) == first
    assert first.version == 1
    # A new request id on the archived journey starts nothing.
    other = S.StartBroadcastRequest(name=f"journeys/{key}", request_id=unique("req"))
    assert (await failure(journeys_stub.StartBroadcast(other, metadata=ACME))).code() == (
        grpc.StatusCode.FAILED_PRECONDITION
    )


async def test_the_report_of_a_journey_nobody_entered(journeys_stub: Stub) -> None:
    definition = simple()
    await create(journeys_stub, definition)
    report = await journeys_stub.GetJourneyReport(
        report_pb2.GetJourneyReportRequest(name=f"journeys/{definition.key}"), metadata=ACME
    )
    assert report.journey_key == definition.key
    assert [s.step_id for s in report.steps] == ["hello"]
    assert all(s.entered == 0 for s in report.steps)
    assert report.member_runs == 0
    missing = await failure(
        journeys_stub.GetJourneyReport(
            report_pb2.GetJourneyReportRequest(name=f"journeys/{definition.key}"), metadata=GLOBEX
        )
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    await bad(
        journeys_stub.GetJourneyReport(
            report_pb2.GetJourneyReportRequest(name="journeys/Bad Key"), metadata=ACME
        ),
        "name",
    )
