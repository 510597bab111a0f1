"""JourneyService over real gRPC: definitions created, validated against the other services,
versioned, read, listed, idempotent by request id, and private to their tenant."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING

import grpc
import pytest
from memberops.audience.v1 import audience_pb2, audience_service_pb2
from memberops.journeys.v1 import journey_pb2, journeys_service_pb2
from memberops.tagging.v1 import member_pb2, tagging_service_pb2

from services.journeys import convert
from tests.conftest import ACME, GLOBEX, unique
from tests.grpc_helpers import bad, failure, field_violations
from tests.journeys.helpers import Named, create, every_field, get, named, simple, update
from workflows.journeys.definition import (
    AddTag,
    AudienceEntry,
    Broadcast,
    Entry,
    EventMatch,
    Send,
    Step,
    TagField,
    Template,
)
from workflows.journeys.shipped import ANNOUNCEMENT

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub
    from memberops.journeys.v1.journeys_service_pb2_grpc import JourneyServiceAsyncStub as Stub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub

State = journey_pb2.JourneyState
Kind = journeys_service_pb2.FindingKind


@pytest.fixture(scope="module")
async def names(tagging_stub: TaggingServiceAsyncStub, audience_stub: AudienceServiceAsyncStub) -> Named:
    return await named(tagging_stub, audience_stub)


async def test_a_journey_using_every_field_is_created_as_a_draft_and_read_back(
    journeys_stub: Stub, names: Named
) -> None:
    definition = every_field(names)
    created = await create(journeys_stub, definition)
    assert (created.name, created.version, created.latest_version) == (f"journeys/{definition.key}", 1, 1)
    assert (created.state, created.live_version) == (State.JOURNEY_STATE_DRAFT, 0)
    assert not created.HasField("state_time")
    assert convert.from_proto(created.definition) == definition
    again = await get(journeys_stub, definition.key)
    assert again == created


async def test_versions_expected_version_and_not_found(journeys_stub: Stub) -> None:
    first = simple()
    await create(journeys_stub, first)
    second = dataclasses.replace(first, name="Second")
    updated = await update(journeys_stub, second, expected_version=1)
    assert (updated.version, updated.latest_version) == (2, 2)
    # The same content again stores nothing, whatever version the caller expected.
    assert (await update(journeys_stub, second, expected_version=1)).version == 2
    third = dataclasses.replace(first, name="Third")
    error = await failure(update(journeys_stub, third, expected_version=1))
    assert error.code() == grpc.StatusCode.ABORTED
    assert "version 2, not 1" in (error.details() or "")
    old = await get(journeys_stub, first.key, version=1)
    assert (old.version, old.latest_version, old.definition.name) == (1, 2, "Simple")
    for call in (
        get(journeys_stub, first.key, version=3),
        get(journeys_stub, unique("none")),
        update(journeys_stub, simple()),
    ):
        assert (await failure(call)).code() == grpc.StatusCode.NOT_FOUND
    existing = await failure(create(journeys_stub, third))
    assert existing.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_malformed_definitions_are_invalid_argument_naming_the_field_path(journeys_stub: Stub) -> None:
    definition = simple()
    wrong = dataclasses.replace(definition, steps=(Step(id="hello", send=Send(template="missing")),))
    await bad(create(journeys_stub, wrong), "journey.steps[0].send.template", "names no template")
    await bad(update(journeys_stub, wrong), "journey.steps[0].send.template")
    message = convert.to_proto(definition)
    message.steps[0].ClearField("send")
    await bad(
        journeys_stub.CreateJourney(
            journeys_service_pb2.CreateJourneyRequest(journey=message), metadata=ACME
        ),
        "journey.steps[0]",
        "set exactly one of",
    )
    await bad(
        journeys_stub.CreateJourney(journeys_service_pb2.CreateJourneyRequest(), metadata=ACME), "journey"
    )
    await bad(create(journeys_stub, simple(), request_id="r" * 129), "request_id")
    await bad(update(journeys_stub, definition, expected_version=-1), "expected_version")
    name = journeys_service_pb2.GetJourneyRequest(name="journey/x")
    await bad(journeys_stub.GetJourney(name, metadata=ACME), "name")
    # Nothing was stored.
    assert (await failure(get(journeys_stub, definition.key))).code() == grpc.StatusCode.NOT_FOUND


async def test_validate_reports_shape_and_reference_findings_and_renders_templates(
    journeys_stub: Stub, names: Named
) -> None:
    good = every_field(names)
    reply = await journeys_stub.ValidateJourney(
        journeys_service_pb2.ValidateJourneyRequest(journey=convert.to_proto(good)), metadata=ACME
    )
    assert reply.valid and not reply.findings
    assert {r.template: r.body for r in reply.rendered} == {
        "hello": "Hi Alex from Shanghai, spend 100",
        "bye": "Bye",
    }

    broken = dataclasses.replace(
        good,
        entry=Entry(audience=AudienceEntry(audience=names.static_audience)),
        steps=(
            *good.steps[:7],
            Step(id="tagged", add_tag=AddTag(dimension=names.strategy, value="winter")),
            *good.steps[8:],
        ),
        templates={
            "hello": Template(
                body="{threshold}",
                tag_fields=(
                    TagField(name="threshold", dimension="average_order_amount", texts={"huge": "1"}),
                ),
            ),
            "bye": Template(body="Bye"),
        },
        exit_on=(EventMatch(kind="tag_removed", dimension="no_such_dimension"),),
    )
    reply = await journeys_stub.ValidateJourney(
        journeys_service_pb2.ValidateJourneyRequest(journey=convert.to_proto(broken)), metadata=ACME
    )
    assert not reply.valid
    assert {(f.field, f.kind) for f in reply.findings} == {
        ("journey.entry.audience.audience", Kind.FINDING_KIND_REFERENCE),
        ("journey.steps[7].add_tag.value", Kind.FINDING_KIND_REFERENCE),
        ("journey.templates['hello'].tag_fields[0].texts['huge']", Kind.FINDING_KIND_REFERENCE),
        ("journey.exit_on[0].dimension", Kind.FINDING_KIND_REFERENCE),
    }
    # Create refuses what validation found, every field at once.
    error = await failure(create(journeys_stub, broken))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {f.field for f in reply.findings}

    malformed = convert.to_proto(good)
    malformed.frequency_cap = 0
    reply = await journeys_stub.ValidateJourney(
        journeys_service_pb2.ValidateJourneyRequest(journey=malformed), metadata=ACME
    )
    assert not reply.valid
    assert [(f.field, f.kind) for f in reply.findings] == [("journey.frequency_cap", Kind.FINDING_KIND_SHAPE)]


@pytest.mark.parametrize("body", ["{nickname:>100000000}", "{nickname!r}", "{nickname:d}"])
async def test_a_template_formatting_its_fields_is_a_shape_error(journeys_stub: Stub, body: str) -> None:
    """A width renders a string of that size at every send (and in this very dry run)."""
    definition = simple(body=body)
    reply = await journeys_stub.ValidateJourney(
        journeys_service_pb2.ValidateJourneyRequest(journey=convert.to_proto(definition)), metadata=ACME
    )
    assert not reply.valid and not reply.rendered
    assert [(f.field, f.kind) for f in reply.findings] == [
        ("journey.templates['hello'].body", Kind.FINDING_KIND_SHAPE)
    ]
    error = await failure(create(journeys_stub, definition))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(field_violations(error)) == ["journey.templates['hello'].body"]


async def test_validate_renders_for_a_named_member(
    journeys_stub: Stub, tagging_stub: TaggingServiceAsyncStub
) -> None:
    member_id = unique("m")
    member = member_pb2.Member(
        member_id=member_id, profile=member_pb2.Profile(nickname="Mei", city="Hangzhou")
    )
    await tagging_stub.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=member), metadata=ACME)
    definition = simple(body="Hi {nickname} in {city} ({member_id})")
    request = journeys_service_pb2.ValidateJourneyRequest(
        journey=convert.to_proto(definition), sample_member=f"members/{member_id}"
    )
    reply = await journeys_stub.ValidateJourney(request, metadata=ACME)
    assert [r.body for r in reply.rendered] == [f"Hi Mei in Hangzhou ({member_id})"]
    request.sample_member = f"members/{unique('none')}"
    assert (await failure(journeys_stub.ValidateJourney(request, metadata=ACME))).code() == (
        grpc.StatusCode.NOT_FOUND
    )
    request.sample_member = "someone"
    await bad(journeys_stub.ValidateJourney(request, metadata=ACME), "sample_member")


async def test_a_retried_write_returns_its_first_answer(journeys_stub: Stub) -> None:
    definition = simple()
    request_id = unique("req")
    first = await create(journeys_stub, definition, request_id=request_id)
    assert await create(journeys_stub, definition, request_id=request_id) == first
    other = dataclasses.replace(definition, name="Other")
    error = await failure(create(journeys_stub, other, request_id=request_id))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert request_id in (error.details() or "")
    # An update retried after a later update returns what it answered the first time.
    update_id = unique("req")
    second = await update(journeys_stub, other, expected_version=1, request_id=update_id)
    await update(journeys_stub, dataclasses.replace(definition, name="Third"))
    again = await update(journeys_stub, other, expected_version=1, request_id=update_id)
    assert (again.version, again.latest_version, again.definition) == (2, 3, second.definition)
    reused = await failure(update(journeys_stub, other, expected_version=2, request_id=update_id))
    assert reused.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_concurrent_duplicates_store_one_version(journeys_stub: Stub) -> None:
    definition = simple()
    request_id = unique("req")
    created = await asyncio.gather(
        *(create(journeys_stub, definition, request_id=request_id) for _ in range(8))
    )
    assert {c.version for c in created} == {1}
    changed = dataclasses.replace(definition, name="Changed")
    update_id = unique("req")
    updated = await asyncio.gather(
        *(update(journeys_stub, changed, expected_version=1, request_id=update_id) for _ in range(8))
    )
    assert {u.version for u in updated} == {2}
    assert (await get(journeys_stub, definition.key)).latest_version == 2
    # Each request id with content of its own (identical content would store one version anyway),
    # sent interleaved: each id stores one version, and a later retry of each (after the others
    # stored theirs, so its content is no longer the latest) answers that version again.
    ids = [unique("req") for _ in range(3)]
    contents = {i: dataclasses.replace(definition, name=f"Name {n}") for n, i in enumerate(ids)}
    answers = await asyncio.gather(
        *(update(journeys_stub, contents[i], request_id=i) for _ in range(4) for i in ids)
    )
    first = {i: {a.version for a in answers[n::3]} for n, i in enumerate(ids)}
    assert all(len(versions) == 1 for versions in first.values())
    assert sorted(v for versions in first.values() for v in versions) == [3, 4, 5]
    for i in ids:
        assert {(await update(journeys_stub, contents[i], request_id=i)).version} == first[i]
    assert (await get(journeys_stub, definition.key)).latest_version == 5


async def test_another_tenant_cannot_see_a_journey(journeys_stub: Stub) -> None:
    definition = simple()
    await create(journeys_stub, definition)
    assert (await failure(get(journeys_stub, definition.key, metadata=GLOBEX))).code() == (
        grpc.StatusCode.NOT_FOUND
    )
    assert (await failure(update(journeys_stub, definition, metadata=GLOBEX))).code() == (
        grpc.StatusCode.NOT_FOUND
    )
    listed = await journeys_stub.ListJourneys(
        journeys_service_pb2.ListJourneysRequest(page_size=1000), metadata=GLOBEX
    )
    assert f"journeys/{definition.key}" not in {j.name for j in listed.journeys}
    # Globex may use the same key for a journey of its own.
    assert (await create(journeys_stub, definition, metadata=GLOBEX)).version == 1


async def test_list_pages_by_key_and_filters_by_state(journeys_stub: Stub) -> None:
    prefix = unique("list")
    keys = [f"{prefix}-{i}" for i in range(5)]
    for key in keys:
        await create(journeys_stub, simple(key))
    await update(journeys_stub, dataclasses.replace(simple(keys[0]), name="v2"))
    seen: list[journey_pb2.Journey] = []
    token = ""
    while True:
        page = await journeys_stub.ListJourneys(
            journeys_service_pb2.ListJourneysRequest(page_size=2, page_token=token), metadata=ACME
        )
        assert len(page.journeys) <= 2
        seen.extend(page.journeys)
        token = page.next_page_token
        if not token:
            break
    names = [j.name for j in seen]
    assert names == sorted(names)
    mine = [j for j in seen if j.name.startswith(f"journeys/{prefix}")]
    assert [j.name for j in mine] == [f"journeys/{k}" for k in keys]
    assert mine[0].version == 2 and mine[0].definition.name == "v2"
    drafts = await journeys_stub.ListJourneys(
        journeys_service_pb2.ListJourneysRequest(page_size=1000, state=State.JOURNEY_STATE_DRAFT),
        metadata=ACME,
    )
    assert {j.state for j in drafts.journeys} == {State.JOURNEY_STATE_DRAFT}
    active = await journeys_stub.ListJourneys(
        journeys_service_pb2.ListJourneysRequest(page_size=1000, state=State.JOURNEY_STATE_ACTIVE),
        metadata=ACME,
    )
    assert not {j.name for j in active.journeys} & {j.name for j in mine}
    for request, path in (
        (journeys_service_pb2.ListJourneysRequest(page_token="nonsense"), "page_token"),
        (journeys_service_pb2.ListJourneysRequest(page_size=1001), "page_size"),
        (journeys_service_pb2.ListJourneysRequest(state=99), "state"),  # type: ignore[arg-type]
    ):
        await bad(journeys_stub.ListJourneys(request, metadata=ACME), path)


async def test_a_broadcast_to_a_snapshot_names_one_that_exists(
    journeys_stub: Stub, names: Named, audience_stub: AudienceServiceAsyncStub
) -> None:
    snapshot = await audience_stub.CreateSnapshot(
        audience_service_pb2.CreateSnapshotRequest(
            audience=f"audiences/{names.static_audience}",
            splits=[audience_pb2.SplitArm(name="all", share_percent=100)],
            request_id=unique("req"),
        ),
        metadata=ACME,
    )
    for name, findings in (
        (snapshot.name, []),
        (f"snapshots/{unique('none')}", ["journey.entry.broadcast.snapshot"]),
    ):
        definition = dataclasses.replace(
            ANNOUNCEMENT, key=unique("bc"), entry=Entry(broadcast=Broadcast(snapshot=name))
        )
        reply = await journeys_stub.ValidateJourney(
            journeys_service_pb2.ValidateJourneyRequest(journey=convert.to_proto(definition)), metadata=ACME
        )
        assert [f.field for f in reply.findings] == findings
