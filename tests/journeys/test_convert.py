"""Definitions between protobuf and the dataclasses: every field survives both ways, unset optional
fields mean the dataclass defaults, and errors name their path in the request."""

from __future__ import annotations

import pytest
from google.protobuf import json_format
from memberops.journeys.v1 import journey_pb2

from runtime.errors import InvalidArgument
from services.journeys import convert
from tests.journeys.definitions import EVERY_FIELD
from workflows.journeys.definition import JourneyDefinition, validate
from workflows.journeys.shipped import SHIPPED


@pytest.mark.parametrize("definition", [*SHIPPED, EVERY_FIELD], ids=lambda d: d.key)
def test_definitions_survive_protobuf_and_its_json(definition: JourneyDefinition) -> None:
    validate(definition)
    message = convert.to_proto(definition)
    assert convert.checked(message) == definition
    again = json_format.Parse(json_format.MessageToJson(message), journey_pb2.JourneyDefinition())
    assert convert.from_proto(again) == definition
    wire = journey_pb2.JourneyDefinition.FromString(message.SerializeToString())
    assert convert.from_proto(wire) == definition


def test_left_out_fields_take_the_dataclass_defaults() -> None:
    message = json_format.ParseDict(
        {
            "key": "minimal",
            "name": "Minimal",
            "entry": {"event": {"kind": "registered"}},
            "steps": [{"id": "hello", "send": {"template": "hello"}}],
            "templates": {"hello": {"body": "Hi {nickname}"}},
            "goal": {"event": {"kind": "order"}},
            "channels": {"fallback": ["sms"]},
        },
        journey_pb2.JourneyDefinition(),
    )
    definition = convert.checked(message)
    assert definition.frequency_cap == 2
    assert definition.max_entry_delay == "1d"
    assert definition.reentry.policy == "never"
    assert definition.steps[0].send is not None and definition.steps[0].send.channel == "preferred"
    assert definition.goal is not None and definition.goal.attribution == "14d"
    assert definition.channels.preferred == "member" and definition.channels.fallback == ("sms",)


def test_errors_name_the_field_path_in_the_request() -> None:
    message = convert.to_proto(EVERY_FIELD)
    message.steps[8].send.template = "missing"
    message.frequency_cap = 0
    message.steps[2].wait_for_event.ClearField("event")
    message.goal.ClearField("event")
    with pytest.raises(InvalidArgument) as shape:
        convert.checked(message)
    assert [v.field for v in shape.value.violations] == [
        "journey.steps[2].wait_for_event.event",
        "journey.goal.event",
    ]
    message = convert.to_proto(EVERY_FIELD)
    message.steps[8].send.template = "missing"
    message.frequency_cap = 0
    message.steps.add(id="nothing")
    with pytest.raises(InvalidArgument) as meaning:
        convert.checked(message)
    assert [v.field for v in meaning.value.violations] == [
        "journey.steps[8].send.template",
        "journey.steps[10]",
        "journey.frequency_cap",
    ]
