"""Journey definitions: validated with the failing field named, carried by Temporal as they are,
stored as immutable versions, and the shipped journeys are valid definitions."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from temporalio.converter import DataConverter

from runtime.db import Database
from runtime.errors import InvalidArgument, NotFound
from tests.conftest import TENANT_ACME, TENANT_GLOBEX, unique
from workflows.journeys import loading, store
from workflows.journeys.definition import (
    AddTag,
    Award,
    Branch,
    Broadcast,
    Condition,
    Entry,
    EventMatch,
    Exit,
    JourneyDefinition,
    Send,
    Split,
    SplitArm,
    Step,
    TagField,
    Template,
    Wait,
    WaitForEvent,
    validate,
    validate_broadcast,
)
from workflows.journeys.shipped import NEW_CUSTOMER, SHIPPED, WIN_BACK


def fields_of(error: InvalidArgument) -> list[str]:
    return [violation.field for violation in error.violations]


def minimal(**changes: Any) -> JourneyDefinition:
    base = JourneyDefinition(
        key="j",
        name="j",
        entry=Entry(event=EventMatch(kind="registered")),
        steps=(Step(id="hello", send=Send(template="hello")),),
        templates={"hello": Template(body="Hi {nickname}")},
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize("definition", SHIPPED, ids=lambda d: d.key)
def test_shipped_journeys_are_valid_and_survive_json_and_temporal(definition: JourneyDefinition) -> None:
    validate(definition)
    assert loading.from_json(loading.to_json(definition)) == definition
    converter = DataConverter.default.payload_converter
    (payload,) = converter.to_payloads([definition])
    assert converter.from_payloads([payload], [JourneyDefinition]) == [definition]


def test_shipped_journeys_have_the_shape_the_issue_asks_for() -> None:
    assert NEW_CUSTOMER.entry.event == EventMatch(kind="first_order")
    assert [s.kind for s in NEW_CUSTOMER.steps] == [
        "send", "wait", "issue_coupon", "send", "wait", "wait_until_hour", "send"
    ]  # fmt: skip
    assert NEW_CUSTOMER.steps[-1].send == Send(template="reminder", channel="fallback")
    # The coupon's own threshold (its template's bands on average_order_amount), not a tag field.
    assert "{coupon_code}" in NEW_CUSTOMER.templates["coupon"].body
    assert "{coupon_threshold}" in NEW_CUSTOMER.templates["coupon"].body
    assert not NEW_CUSTOMER.templates["coupon"].tag_fields
    (offer,) = [i for i, s in enumerate(WIN_BACK.steps) if s.send and s.send.template == "offer"]
    assert WIN_BACK.steps[offer - 1].kind == "issue_coupon"
    assert WIN_BACK.holdout_percent == 10
    assert WIN_BACK.goal is not None and WIN_BACK.goal.event.kind == "order"
    assert {s.send.channel for s in WIN_BACK.steps if s.send} == {"preferred", "fallback"}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"key": "Bad Key"}, ["key"]),
        ({"entry": Entry()}, ["entry"]),
        ({"entry": Entry(event=EventMatch(kind="purchase"))}, ["entry.event.kind"]),
        ({"entry": Entry(event=EventMatch(kind="tag_added"))}, ["entry.event.dimension"]),
        (
            {"steps": (Step(id="a", send=Send(template="hello")), Step(id="b", send=Send(template="bye")))},
            ["steps[1].send.template"],
        ),
        ({"steps": (Step(id="a", send=Send(template="hello", channel="fax")),)}, ["steps[0].send.channel"]),
        ({"steps": (Step(id="a", wait=Wait(duration="3 days")),)}, ["steps[0].wait.duration"]),
        ({"steps": (Step(id="a", wait=Wait(duration="400d")),)}, ["steps[0].wait.duration"]),
        ({"steps": (Step(id="a"),)}, ["steps[0]"]),
        (
            {"steps": (Step(id="a", wait=Wait(duration="1d"), exit=None, send=Send(template="hello")),)},
            ["steps[0]"],
        ),
        (
            {
                "steps": (
                    Step(id="a", send=Send(template="hello")),
                    Step(id="b", branch=Branch(condition=Condition(audience="vip"), if_true="a")),
                )
            },
            ["steps[1].branch.if_true"],
        ),
        (
            {
                "steps": (
                    Step(id="a", split=Split(arms=(SplitArm("x", 50), SplitArm("y", 40, next="nowhere")))),
                )
            },
            ["steps[0].split.arms[1].next", "steps[0].split.arms"],
        ),
        ({"steps": (Step(id="a", send=Send(template="hello")),) * 2}, ["steps[1].id"]),
        ({"templates": {"hello": Template(body="Hi {name}")}}, ["templates['hello'].body"]),
        ({"templates": {"hello": Template(body="Hi {nickname")}}, ["templates['hello'].body"]),
        ({"holdout_percent": 10}, ["holdout_percent"]),
        ({"frequency_cap": 0}, ["frequency_cap"]),
    ],
)
def test_invalid_definitions_name_the_failing_field(changes: dict[str, Any], expected: list[str]) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate(minimal(**changes))
    assert fields_of(caught.value) == expected


def test_every_mistake_is_reported_at_once() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate(minimal(key="", frequency_cap=99, steps=(Step(id="x", send=Send(template="nope")),)))
    assert fields_of(caught.value) == ["key", "steps[0].send.template", "frequency_cap"]


def test_json_of_the_wrong_shape_names_each_path() -> None:
    data = loading.to_data(NEW_CUSTOMER)
    data["steps"][1]["wait"] = {"duration": 3}
    data["steps"][2]["sned"] = {"template": "coupon"}
    del data["name"]
    data["holdout_percent"] = True
    with pytest.raises(InvalidArgument) as caught:
        loading.from_data(data)
    assert sorted(fields_of(caught.value)) == [
        "holdout_percent",
        "name",
        "steps[1].wait.duration",
        "steps[2].sned",
    ]


def test_json_shape_errors_come_before_meaning_and_bad_json_is_named() -> None:
    with pytest.raises(InvalidArgument) as caught:
        loading.from_json("{not json")
    assert fields_of(caught.value) == [""]
    data = loading.to_data(NEW_CUSTOMER)
    data["steps"][0]["send"]["template"] = "missing"
    with pytest.raises(InvalidArgument) as meaning:
        loading.from_json(json.dumps(data))
    assert fields_of(meaning.value) == ["steps[0].send.template"]


async def test_storing_adds_a_version_only_when_the_content_changes(journeys_db: Database) -> None:
    definition = minimal(key=unique("j"))
    first = await store.put_definition(journeys_db, TENANT_ACME, definition)
    again = await store.put_definition(journeys_db, TENANT_ACME, definition)
    changed = dataclasses.replace(definition, name="renamed")
    second = await store.put_definition(journeys_db, TENANT_ACME, changed)
    assert (first.version, again.version, second.version) == (1, 1, 2)
    assert (await store.get_definition(journeys_db, TENANT_ACME, definition.key)).definition == changed
    assert (await store.get_definition(journeys_db, TENANT_ACME, definition.key, 1)).definition == definition
    with pytest.raises(NotFound):
        await store.get_definition(journeys_db, TENANT_ACME, definition.key, 3)
    with pytest.raises(NotFound):
        await store.get_definition(journeys_db, TENANT_GLOBEX, definition.key)


async def test_an_invalid_definition_is_never_stored(journeys_db: Database) -> None:
    definition = minimal(key=unique("j"), frequency_cap=0)
    with pytest.raises(InvalidArgument):
        await store.put_definition(journeys_db, TENANT_ACME, definition)
    with pytest.raises(NotFound):
        await store.get_definition(journeys_db, TENANT_ACME, definition.key)


async def test_seeding_stores_shipped_journeys_once_and_keeps_a_tenants_own_version(
    journeys_db: Database,
) -> None:
    shipped = minimal(key=unique("shipped"))
    tenants = frozenset({TENANT_ACME, TENANT_GLOBEX})
    await store.seed_definitions(journeys_db, tenants, (shipped,))
    own = dataclasses.replace(shipped, name="acme's own")
    await store.put_definition(journeys_db, TENANT_ACME, own)
    await store.seed_definitions(journeys_db, tenants, (shipped,))
    assert (await store.get_definition(journeys_db, TENANT_ACME, shipped.key)).definition == own
    assert (await store.get_definition(journeys_db, TENANT_GLOBEX, shipped.key)).version == 1


def test_a_broadcast_takes_only_the_steps_a_cohort_runs_in_batches() -> None:
    entry = Entry(broadcast=Broadcast(audience="vip"))
    steps = (
        Step(id="split", split=Split(arms=(SplitArm("a", 50), SplitArm("b", 50)))),
        Step(id="hello", send=Send(template="hello")),
        Step(id="mark", add_tag=AddTag(dimension="campaign", value="spring")),
        Step(id="wait-1d", wait=Wait(duration="1d")),
        Step(id="done", exit=Exit()),
    )
    validate(minimal(entry=entry, steps=steps))
    unsupported = (
        Step(id="hello", send=Send(template="coupon")),
        Step(id="order", wait_for_event=WaitForEvent(event=EventMatch(kind="order"), timeout="3d")),
        Step(id="vip", branch=Branch(condition=Condition(audience="vip"))),
        Step(id="points", award=Award(points=10)),
    )
    coupon = Template(body="{threshold}", tag_fields=(TagField(name="threshold", dimension="spend"),))
    with pytest.raises(InvalidArgument) as caught:
        validate(minimal(entry=entry, steps=unsupported, templates={"coupon": coupon}))
    assert fields_of(caught.value) == [
        "steps[1].wait_for_event",
        "steps[2].branch",
        "steps[3].award",
        "templates['coupon'].tag_fields",
    ]
    # The same steps are fine for a triggered journey; a cohort needs a broadcast entry.
    triggered = minimal(steps=unsupported, templates={"coupon": coupon})
    validate(triggered)
    with pytest.raises(InvalidArgument) as caught:
        validate_broadcast(triggered)
    assert fields_of(caught.value) == ["entry"]
