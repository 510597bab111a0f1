"""Journeys that issue real coupons, on the time-skipping server against the real tasks service: a
member gets one coupon per enrolment and step even when the activity is retried after the tasks
service issued it, the message shows its code and terms, the holdout gets none, a refusal (no
stock, a retired template) neither fails the journey nor sends a coupon message without a coupon,
and the report counts coupons issued and used per arm."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import grpc
from memberops.journeys.v1 import journeys_service_pb2_grpc, report_pb2
from memberops.tagging.v1 import facts_pb2, tagging_service_pb2, tagging_service_pb2_grpc
from memberops.tasks.v1 import coupons_pb2, tasks_service_pb2, tasks_service_pb2_grpc
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    Worker,
)

from runtime import app
from runtime.config import Settings
from runtime.db import Database
from tests.conftest import ACME, TENANT_ACME, unique
from tests.waiting import eventually
from tests.workflows import fakes
from tests.workflows.journey_helpers import (
    figures,
    journey,
    keep_history,
    member_in,
    phone_of,
    running,
    seed_member,
    start,
)
from workflows.journeys.definition import (
    EventMatch,
    Goal,
    IssueCoupon,
    Send,
    Split,
    SplitArm,
    Step,
    Template,
)
from workflows.journeys.steps.split import split_arm
from workflows.journeys.workflow import JOURNEY_WORKFLOW
from workflows.liveness import Liveness
from workflows.worker import WORKFLOWS, Resources, activities

COUPON = Template(
    subject="A coupon",
    body="Hi {nickname}, {coupon_discount} off orders of {coupon_threshold} with {coupon_code}, "
    "until {coupon_valid_until}.",
)


def tasks_of(resources: Resources) -> tasks_service_pb2_grpc.TasksServiceAsyncStub:
    return tasks_service_pb2_grpc.TasksServiceStub(resources.tasks)


async def coupon_template(resources: Resources, **changes: Any) -> str:
    """A new template: 20 off orders of 50, valid 7 days (changed by `changes`)."""
    template = coupons_pb2.CouponTemplate(
        template_id=unique("c"),
        display_name="Test coupon",
        amount_off=coupons_pb2.AmountOff(amount_minor=2_000),
        threshold_minor=5_000,
        valid_days=7,
        **changes,
    )
    await tasks_of(resources).CreateCouponTemplate(
        tasks_service_pb2.CreateCouponTemplateRequest(template=template), metadata=ACME
    )
    return template.template_id


def coupon_journey(template_id: str, **changes: Any) -> Any:
    return journey(
        Step(id="give", issue_coupon=IssueCoupon(template=template_id)),
        Step(id="tell", send=Send(template="coupon")),
        templates={"coupon": COUPON},
        **changes,
    )


async def coupons_of(resources: Resources, member_id: str) -> list[coupons_pb2.Coupon]:
    reply = await tasks_of(resources).ListMemberCoupons(
        tasks_service_pb2.ListMemberCouponsRequest(member_id=member_id), metadata=ACME
    )
    return list(reply.coupons)


class _LoseFirstIssueAnswer(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, attempts: list[int]) -> None:
        super().__init__(next)
        self._attempts = attempts

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        result = await super().execute_activity(input)
        info = activity.info()
        if info.activity_type == "journeys.issue_coupon":
            self._attempts.append(info.attempt)
            if info.attempt == 1:
                # The tasks service issued the coupon; the worker lost the answer. Retried.
                raise ApplicationError("answer lost after IssueCoupon", type="Lost")
        return result


class LoseFirstIssueAnswer(Interceptor):
    def __init__(self) -> None:
        self.attempts: list[int] = []

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _LoseFirstIssueAnswer(next, self.attempts)


async def test_a_member_gets_one_coupon_even_when_the_issue_is_retried_and_its_code_in_the_message(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    provider: fakes.Provider,
) -> None:
    template_id = await coupon_template(resources)
    definition = coupon_journey(template_id)
    member_id = unique()
    await seed_member(resources.tagging, member_id, nickname="Mei")
    lose = LoseFirstIssueAnswer()
    worker = Worker(
        time_skipping_env.client,
        task_queue=worker_settings.temporal_task_queue,
        workflows=list(WORKFLOWS),
        activities=activities(resources, worker_settings, time_skipping_env.client),
        interceptors=[Liveness([JOURNEY_WORKFLOW]), lose],
    )
    async with worker:
        handle = await start(time_skipping_env, worker_settings, journeys_db, definition, member_id)
        funnel = await handle.result()
        await keep_history(handle, "issued_coupon_in_message")
    assert lose.attempts == [1, 2]
    assert figures(funnel, "give") == {"entered": 1, "done": 1}
    assert figures(funnel, "tell") == {"entered": 1, "sent": 1}
    (coupon,) = await coupons_of(resources, member_id)
    assert coupon.template_id == template_id and coupon.threshold_minor == 5_000
    assert (coupon.source.campaign, coupon.source.arm) == (f"journeys/{definition.key}", "treated")
    last_day = coupon.valid_until.ToDatetime(tzinfo=dt.UTC).astimezone(ZoneInfo("Asia/Shanghai"))
    last_day -= dt.timedelta(microseconds=1)
    (sms,) = provider.to(phone_of(member_id))
    assert sms.body["body"] == (
        f"Hi Mei, 20 off orders of 50 with {coupon.code}, until {last_day.date().isoformat()}."
    )


async def test_the_holdout_gets_no_coupon(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    provider: fakes.Provider,
) -> None:
    template_id = await coupon_template(resources)
    definition = coupon_journey(
        template_id, holdout_percent=50, goal=Goal(event=EventMatch(kind="order"), attribution="1h")
    )
    held = member_in(definition, holdout=True)
    await seed_member(resources.tagging, held)
    async with running(time_skipping_env, worker_settings, resources):
        funnel = await (
            await start(time_skipping_env, worker_settings, journeys_db, definition, held)
        ).result()
    assert funnel.arm == "holdout"
    assert figures(funnel, "give") == {"entered": 1, "held_out": 1}
    assert figures(funnel, "tell") == {"entered": 1, "held_out": 1}
    assert await coupons_of(resources, held) == []
    assert provider.to(phone_of(held)) == []


async def skipped_detail(db: Database, member_id: str) -> list[tuple[str, str, str]]:
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        rows = await conn.fetch(
            "SELECT step_id, status, detail FROM journeys.messages WHERE tenant_id = $1 AND member_id = $2",
            TENANT_ACME,
            member_id,
        )
    return [(row["step_id"], row["status"], row["detail"]) for row in rows]


async def test_a_refused_coupon_neither_fails_the_journey_nor_sends_a_coupon_message(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    provider: fakes.Provider,
) -> None:
    # One coupon for two members (RESOURCE_EXHAUSTED for one), and a retired template
    # (FAILED_PRECONDITION).
    scarce = coupon_journey(await coupon_template(resources, total_stock=1))
    retired_id = await coupon_template(resources)
    retired = coupon_journey(retired_id)
    await tasks_of(resources).RetireCouponTemplate(
        tasks_service_pb2.RetireCouponTemplateRequest(name=f"couponTemplates/{retired_id}"), metadata=ACME
    )
    members = [unique() for _ in range(3)]
    for member_id in members:
        await seed_member(resources.tagging, member_id)
    async with running(time_skipping_env, worker_settings, resources):
        handles = [
            await start(time_skipping_env, worker_settings, journeys_db, scarce, members[0]),
            await start(time_skipping_env, worker_settings, journeys_db, scarce, members[1]),
            await start(time_skipping_env, worker_settings, journeys_db, retired, members[2]),
        ]
        funnels = [await handle.result() for handle in handles]
    assert [f.state for f in funnels] == ["completed"] * 3
    issued, refused_once = {"entered": 1, "done": 1}, {"entered": 1, "failed": 1}
    gives = [figures(f, "give") for f in funnels]
    # The scarce template's one coupon went to one of its two members, either.
    assert issued in gives[:2] and refused_once in gives[:2]
    assert gives[2] == refused_once
    got = [m for m, f in zip(members, funnels, strict=True) if "done" in figures(f, "give")]
    refused = [m for m in members if m not in got]
    (lucky,) = got
    assert len(await coupons_of(resources, lucky)) == 1 and len(provider.to(phone_of(lucky))) == 1
    for member_id in refused:
        funnel = funnels[members.index(member_id)]
        assert figures(funnel, "tell") == {"entered": 1, "skipped": 1}
        assert await coupons_of(resources, member_id) == []
        assert provider.to(phone_of(member_id)) == []
        assert await skipped_detail(journeys_db, member_id) == [
            ("tell", "skipped", "no coupon: the journey issued the member none")
        ]


def members_by_arm(definition: Any, per_arm: int, held: int) -> dict[str, list[str]]:
    """Fresh members: `per_arm` treated ones in each arm of the journey's split, `held` in the holdout."""
    (split,) = [s for s in definition.steps if s.split is not None]
    wanted = {f"pick:{arm.name}": per_arm for arm in split.split.arms} | {"holdout": held}
    found: dict[str, list[str]] = {arm: [] for arm in wanted}
    while any(len(found[arm]) < n for arm, n in wanted.items()):
        holding = len(found["holdout"]) < held
        member_id = member_in(definition, holdout=holding)
        arm = "holdout" if holding else f"pick:{split_arm(definition.key, split, member_id).name}"
        if len(found[arm]) < wanted[arm]:
            found[arm].append(member_id)
    return found


async def pay_with(tagging: grpc.aio.Channel, member_id: str, code: str) -> None:
    """An order of 60 paid now with the coupon's code (the tasks service writes it off from the feed)."""
    order = facts_pb2.Order(
        order_id=unique("o"),
        member_id=member_id,
        amount_minor=6_000,
        lines=[
            facts_pb2.OrderLine(line_id="0", sku="tea", category="food", quantity=1, unit_price_minor=6_000)
        ],
        coupon_codes=[code],
    )
    order.paid_time.FromDatetime(dt.datetime.now(dt.UTC))
    stub = tagging_service_pb2_grpc.TaggingServiceStub(tagging)
    await stub.RecordOrder(tagging_service_pb2.RecordOrderRequest(order=order), metadata=ACME)


async def test_the_report_counts_coupons_issued_and_used_per_arm(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
    journeys: app.RunningService,
) -> None:
    template_id = await coupon_template(resources)
    definition = journey(
        Step(id="pick", split=Split(arms=(SplitArm("a", 50), SplitArm("b", 50)))),
        Step(id="give", issue_coupon=IssueCoupon(template=template_id)),
        Step(id="tell", send=Send(template="coupon")),
        templates={"coupon": COUPON},
        holdout_percent=20,
        goal=Goal(event=EventMatch(kind="order"), attribution="1h"),
    )
    arms = members_by_arm(definition, per_arm=2, held=1)
    every = [m for members in arms.values() for m in members]
    for member_id in every:
        await seed_member(resources.tagging, member_id)
    async with running(time_skipping_env, worker_settings, resources):
        handles = [await start(time_skipping_env, worker_settings, journeys_db, definition, m) for m in every]
        for handle in handles:
            await handle.result()
    (used,) = await coupons_of(resources, arms["pick:a"][0])
    assert used.source.arm == "pick:a"
    await pay_with(resources.tagging, arms["pick:a"][0], used.code)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{journeys.port}") as channel:
        stub = journeys_service_pb2_grpc.JourneyServiceStub(channel)
        request = report_pb2.GetJourneyReportRequest(name=f"journeys/{definition.key}")

        async def written_off() -> report_pb2.JourneyReport | None:
            found = await stub.GetJourneyReport(request, metadata=ACME)
            return found if found.arms[0].coupons_used else None

        shown = await eventually(written_off, "did the tasks service write the coupon off")
    assert not shown.coupons_unavailable
    assert {a.arm: (a.members, a.coupons_issued, a.coupons_used) for a in shown.arms} == {
        "treated": (4, 4, 1),
        "holdout": (1, 0, 0),
        "pick:a": (2, 2, 1),
        "pick:b": (2, 2, 0),
    }
