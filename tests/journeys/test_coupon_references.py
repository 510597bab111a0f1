"""A journey's issue_coupon steps name coupon templates of the tasks service: a template that does
not exist (or is retired) is refused when the journey is written (INVALID_ARGUMENT) and when a
version is activated (FAILED_PRECONDITION), each naming the step's field; a coupon field without an
issue step before it is a malformed definition."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import pytest
from memberops.journeys.v1 import journey_pb2, journeys_service_pb2
from memberops.tasks.v1 import coupons_pb2, tasks_service_pb2, tasks_service_pb2_grpc

from runtime import app
from runtime.peer_calls import bearer
from services.journeys import convert
from tests.conftest import ACME, TOKEN_HOOLI, unique
from tests.grpc_helpers import bad, failure
from tests.journeys.helpers import create, get, simple
from workflows.dispatcher.__main__ import ensure_audiences
from workflows.journeys.definition import IssueCoupon, JourneyDefinition, Send, Step, Template
from workflows.journeys.shipped import NEW_CUSTOMER, WIN_BACK
from workflows.journeys.shipped_coupons import ensure_coupon_templates

if TYPE_CHECKING:
    from memberops.journeys.v1.journeys_service_pb2_grpc import JourneyServiceAsyncStub as Stub

GIVE = "journey.steps[0].issue_coupon.template"
HOOLI = bearer(TOKEN_HOOLI)


@pytest.fixture
async def tasks_stub(
    tasks: app.RunningService,
) -> AsyncIterator[tasks_service_pb2_grpc.TasksServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tasks.port}") as channel:
        yield tasks_service_pb2_grpc.TasksServiceStub(channel)


async def new_template(tasks_stub: tasks_service_pb2_grpc.TasksServiceAsyncStub) -> str:
    template = coupons_pb2.CouponTemplate(
        template_id=unique("c"),
        display_name="Ten off",
        amount_off=coupons_pb2.AmountOff(amount_minor=1_000),
        valid_days=7,
    )
    await tasks_stub.CreateCouponTemplate(
        tasks_service_pb2.CreateCouponTemplateRequest(template=template), metadata=ACME
    )
    return template.template_id


def coupon_journey(template_id: str) -> JourneyDefinition:
    return dataclasses.replace(
        simple(),
        steps=(
            Step(id="give", issue_coupon=IssueCoupon(template=template_id)),
            Step(id="hello", send=Send(template="hello")),
        ),
        templates={"hello": Template(body="Hi {nickname}, {coupon_code} takes {coupon_discount} off")},
    )


def create_request(definition: JourneyDefinition) -> journeys_service_pb2.CreateJourneyRequest:
    return journeys_service_pb2.CreateJourneyRequest(journey=convert.to_proto(definition))


async def test_a_journey_naming_a_missing_template_is_not_stored(journeys_stub: Stub) -> None:
    missing = coupon_journey(unique("c"))
    await bad(
        journeys_stub.CreateJourney(create_request(missing), metadata=ACME), GIVE, "names no coupon template"
    )


async def test_coupon_fields_without_an_issue_step_before_them_are_refused(journeys_stub: Stub) -> None:
    definition = dataclasses.replace(simple(), templates={"hello": Template(body="Your code: {coupon_code}")})
    await bad(
        journeys_stub.CreateJourney(create_request(definition), metadata=ACME),
        "journey.steps[0].send.template",
        "an issue_coupon step must come before this send",
    )


async def test_a_version_whose_template_was_retired_cannot_go_live(
    journeys_stub: Stub, tasks_stub: tasks_service_pb2_grpc.TasksServiceAsyncStub
) -> None:
    template_id = await new_template(tasks_stub)
    definition = coupon_journey(template_id)
    await create(journeys_stub, definition)
    await tasks_stub.RetireCouponTemplate(
        tasks_service_pb2.RetireCouponTemplateRequest(name=f"couponTemplates/{template_id}"), metadata=ACME
    )
    error = await failure(
        journeys_stub.ActivateJourney(
            journeys_service_pb2.ActivateJourneyRequest(name=f"journeys/{definition.key}"), metadata=ACME
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"{GIVE}: couponTemplates/{template_id} is retired" in (error.details() or "")
    assert (await get(journeys_stub, definition.key)).state == journey_pb2.JourneyState.JOURNEY_STATE_DRAFT


async def test_a_journey_with_a_live_template_validates_goes_live_and_renders_sample_coupons(
    journeys_stub: Stub, tasks_stub: tasks_service_pb2_grpc.TasksServiceAsyncStub
) -> None:
    template_id = await new_template(tasks_stub)
    definition = coupon_journey(template_id)
    checked = await journeys_stub.ValidateJourney(
        journeys_service_pb2.ValidateJourneyRequest(journey=convert.to_proto(definition)), metadata=ACME
    )
    assert not checked.findings
    assert [r.body for r in checked.rendered] == ["Hi Alex, SAMPLE0COUPON000 takes 20 off"]
    await create(journeys_stub, definition)
    live = await journeys_stub.ActivateJourney(
        journeys_service_pb2.ActivateJourneyRequest(name=f"journeys/{definition.key}"), metadata=ACME
    )
    assert live.state == journey_pb2.JourneyState.JOURNEY_STATE_ACTIVE
    assert live.definition.steps[0].issue_coupon.template == template_id


async def test_the_shipped_templates_are_created_once_and_the_shipped_journeys_can_go_live(
    journeys_stub: Stub,
    tasks: app.RunningService,
    audience: app.RunningService,
    tasks_stub: tasks_service_pb2_grpc.TasksServiceAsyncStub,
) -> None:
    """What `python -m workflows.dispatcher` (and so `make up`) ensures for a tenant."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tasks.port}") as channel:
        first = await ensure_coupon_templates(channel, TOKEN_HOOLI)
        again = await ensure_coupon_templates(channel, TOKEN_HOOLI)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{audience.port}") as channel:
        await ensure_audiences(channel, TOKEN_HOOLI)
    assert first == again == ("new-customer-20-off", "win-back-30-off")
    shown = await tasks_stub.GetCouponTemplate(
        tasks_service_pb2.GetCouponTemplateRequest(name="couponTemplates/new-customer-20-off"), metadata=HOOLI
    )
    assert (shown.amount_off.amount_minor, shown.threshold_minor, shown.valid_days) == (2_000, 10_000, 14)
    assert dict(shown.tag_thresholds.thresholds) == {
        "lt_100": 5_000,
        "100_200": 10_000,
        "200_500": 20_000,
        "500_plus": 50_000,
    }
    for shipped in (NEW_CUSTOMER, WIN_BACK):
        definition = dataclasses.replace(shipped, key=unique(shipped.key))
        await create(journeys_stub, definition, metadata=HOOLI)
        live = await journeys_stub.ActivateJourney(
            journeys_service_pb2.ActivateJourneyRequest(name=f"journeys/{definition.key}"), metadata=HOOLI
        )
        assert live.state == journey_pb2.JourneyState.JOURNEY_STATE_ACTIVE
