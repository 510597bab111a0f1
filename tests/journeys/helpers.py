"""What the journeys service tests share: the other services' resources a definition names, and a
definition using every field that names only those."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memberops.audience.v1 import audience_pb2, audience_service_pb2
from memberops.journeys.v1 import journey_pb2, journeys_service_pb2
from memberops.tagging.v1 import tagging_service_pb2, tags_pb2

from services.journeys import convert
from tests.conftest import ACME, unique
from tests.journeys.definitions import EVERY_FIELD
from workflows.journeys.definition import (
    AddTag,
    Branch,
    Condition,
    Entry,
    EventMatch,
    JourneyDefinition,
    Send,
    Step,
    Template,
)

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub
    from memberops.journeys.v1.journeys_service_pb2_grpc import JourneyServiceAsyncStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub


@dataclass(frozen=True)
class Named:
    """Resources in the other services, of one tenant: a dynamic and a static audience, and a
    strategy dimension with the values `spring` and `autumn`."""

    dynamic_audience: str
    static_audience: str
    strategy: str


async def named(
    tagging: TaggingServiceAsyncStub, audience: AudienceServiceAsyncStub, metadata: Any = ACME
) -> Named:
    rule = audience_pb2.AudienceRule(
        tag=audience_pb2.TagCondition(dimension="lifecycle", match=audience_pb2.TAG_MATCH_HAS_ANY_VALUE)
    )
    ids = []
    for dynamic in (True, False):
        audience_id = unique("aud")
        await audience.CreateAudience(
            audience_service_pb2.CreateAudienceRequest(
                audience=audience_pb2.Audience(audience_id=audience_id, rule=rule, dynamic=dynamic)
            ),
            metadata=metadata,
        )
        ids.append(audience_id)
    strategy = unique("campaign").replace("-", "_")
    await tagging.CreateTagDefinition(
        tagging_service_pb2.CreateTagDefinitionRequest(
            tag_definition=tags_pb2.TagDefinition(
                dimension=strategy,
                category=tags_pb2.TAG_CATEGORY_MARKETING,
                kind=tags_pb2.TAG_KIND_STRATEGY,
                refresh_policy=tags_pb2.REFRESH_POLICY_SCHEDULED,
                cardinality=tags_pb2.CARDINALITY_MULTI,
                values=[tags_pb2.TagValue(value=v) for v in ("spring", "autumn")],
            )
        ),
        metadata=metadata,
    )
    return Named(ids[0], ids[1], strategy)


def every_field(names: Named, key: str = "") -> JourneyDefinition:
    """EVERY_FIELD naming only what exists in the tenant of `names`."""
    steps = list(EVERY_FIELD.steps)
    steps[5] = Step(id="audience", branch=Branch(condition=Condition(audience=names.static_audience)))
    steps[7] = Step(id="tagged", add_tag=AddTag(dimension=names.strategy, value="spring"))
    return dataclasses.replace(
        EVERY_FIELD,
        key=key or unique("every"),
        steps=tuple(steps),
        exit_on=(
            EventMatch(kind="audience_exited", audience=names.dynamic_audience),
            EventMatch(kind="tag_removed", dimension="lifecycle"),
        ),
    )


def simple(key: str = "", body: str = "Hi {nickname}") -> JourneyDefinition:
    """A journey that names nothing in other services."""
    return JourneyDefinition(
        key=key or unique("j"),
        name="Simple",
        entry=Entry(event=EventMatch(kind="registered")),
        steps=(Step(id="hello", send=Send(template="hello")),),
        templates={"hello": Template(body=body)},
    )


async def create(
    stub: JourneyServiceAsyncStub, definition: JourneyDefinition, request_id: str = "", metadata: Any = ACME
) -> journey_pb2.Journey:
    request = journeys_service_pb2.CreateJourneyRequest(
        journey=convert.to_proto(definition), request_id=request_id
    )
    return await stub.CreateJourney(request, metadata=metadata)


async def update(
    stub: JourneyServiceAsyncStub,
    definition: JourneyDefinition,
    expected_version: int = 0,
    request_id: str = "",
    metadata: Any = ACME,
) -> journey_pb2.Journey:
    request = journeys_service_pb2.UpdateJourneyRequest(
        journey=convert.to_proto(definition), expected_version=expected_version, request_id=request_id
    )
    return await stub.UpdateJourney(request, metadata=metadata)


async def get(
    stub: JourneyServiceAsyncStub, key: str, version: int = 0, metadata: Any = ACME
) -> journey_pb2.Journey:
    request = journeys_service_pb2.GetJourneyRequest(name=f"journeys/{key}", version=version)
    return await stub.GetJourney(request, metadata=metadata)
