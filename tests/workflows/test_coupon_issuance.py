"""IssueCouponToAudience: one operation per request id, readable with no worker running, every
member of the snapshot given one coupon page by page by the issuance workflow, the per-member limit
and the stock counted, and a page issued again (a worker that died after issuing, or halfway)
issuing nothing twice.

Each test runs a tasks server of its own that starts issuances on the dev server, on the test's
task queue, and a worker whose activities call that server.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from memberops.audience.v1 import audience_pb2, audience_service_pb2, audience_service_pb2_grpc
from memberops.tasks.v1 import coupons_pb2, tasks_service_pb2, tasks_service_pb2_grpc
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from runtime import app
from runtime.config import Settings
from runtime.db import Database
from services.tasks import server as tasks_server
from tests.audience.helpers import in_batch
from tests.conftest import ACME, TENANT_ACME, unique
from tests.grpc_helpers import bad, failure
from tests.tasks.coupon_helpers import stamp
from tests.waiting import eventually
from tests.workflows.cohort_helpers import population
from tests.workflows.journey_helpers import keep_history
from tests.workflows.test_tag_history_rebuild import runs
from workflows.coupon_issuance.payloads import IssuanceInput, workflow_id
from workflows.coupon_issuance.workflow import CouponIssuanceWorkflow
from workflows.worker import Resources, build_worker

if TYPE_CHECKING:
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

End = coupons_pb2.CouponIssuanceEnd


@dataclasses.dataclass(frozen=True)
class Issuances:
    """A tasks server of the test's own and what a worker calling it needs."""

    stub: TasksStub
    settings: Settings
    resources: Resources
    client: Client

    def worker(self) -> Any:
        return build_worker(self.client, self.settings, self.resources)

    async def template(self, **fields: Any) -> str:
        template = coupons_pb2.CouponTemplate(
            template_id=unique("ct"),
            display_name="Ten off",
            amount_off=coupons_pb2.AmountOff(amount_minor=1000),
            threshold_minor=5000,
            **{"valid_days": 30, **fields},
        )
        created = await self.stub.CreateCouponTemplate(
            tasks_service_pb2.CreateCouponTemplateRequest(template=template), metadata=ACME
        )
        return created.name

    async def audience(self, count: int) -> tuple[str, list[str]]:
        """`count` new members and an audience of exactly them: (`audiences/{id}`, member ids)."""
        batch, ids = await population(self.resources.tagging, count)
        audience_id = unique("aud")
        await audience_service_pb2_grpc.AudienceServiceStub(self.resources.audience).CreateAudience(
            audience_service_pb2.CreateAudienceRequest(
                audience=audience_pb2.Audience(audience_id=audience_id, rule=in_batch(batch))
            ),
            metadata=ACME,
        )
        return f"audiences/{audience_id}", ids

    async def start(
        self, template: str, audience: str, request_id: str, stub: TasksStub | None = None, **source: str
    ) -> coupons_pb2.CouponIssuance:
        request = tasks_service_pb2.IssueCouponToAudienceRequest(
            template=template,
            audience=audience,
            source=coupons_pb2.CouponSource(**source),
            request_id=request_id,
        )
        return await (stub or self.stub).IssueCouponToAudience(request, metadata=ACME)

    async def get(self, request_id: str) -> coupons_pb2.CouponIssuance:
        request = tasks_service_pb2.GetCouponIssuanceRequest(name=f"couponIssuances/{request_id}")
        return await self.stub.GetCouponIssuance(request, metadata=ACME)

    async def finished(self, request_id: str) -> coupons_pb2.CouponIssuance:
        async def done() -> coupons_pb2.CouponIssuance | None:
            issuance = await self.get(request_id)
            return issuance if issuance.done else None

        return await eventually(done, f"issuance {request_id} done", within=60)

    async def page(
        self, request_id: str, token: str = ""
    ) -> tasks_service_pb2.IssueCouponIssuancePageResponse:
        request = tasks_service_pb2.IssueCouponIssuancePageRequest(
            name=f"couponIssuances/{request_id}", page_token=token
        )
        return await self.stub.IssueCouponIssuancePage(request, metadata=ACME)

    async def issued_to(self, campaign: str) -> int:
        stats = await self.stub.GetCouponStats(
            tasks_service_pb2.GetCouponStatsRequest(campaign=campaign), metadata=ACME
        )
        return sum(arm.issued for arm in stats.arms)


@pytest.fixture
async def issuances(
    worker_settings: Settings, resources: Resources, dev_server_env: WorkflowEnvironment
) -> AsyncIterator[Issuances]:
    settings = dataclasses.replace(
        worker_settings, temporal_address=dev_server_env.client.service_client.config.target_host
    )

    def wire(db: Database | None, tenants: frozenset[str], served: Settings) -> app.Wiring:
        return tasks_server.wire(db, frozenset(), served)

    definition = dataclasses.replace(tasks_server.DEFINITION, wire=wire)
    running = await app.start(definition, settings, "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield Issuances(
                tasks_service_pb2_grpc.TasksServiceStub(channel),
                settings,
                dataclasses.replace(resources, tasks=channel),
                dev_server_env.client,
            )
    finally:
        await running.stop()


async def test_every_member_gets_one_coupon_and_the_same_request_is_the_same_operation(
    issuances: Issuances,
) -> None:
    template = await issuances.template(total_stock=1000)
    audience, members = await issuances.audience(450)
    request_id, campaign = unique("iss"), unique("campaign")
    started = await issuances.start(template, audience, request_id, campaign=campaign, arm="a")
    # Readable with no worker running: the snapshot is taken, nothing issued yet.
    assert (started.name, started.audience, started.members) == (
        f"couponIssuances/{request_id}",
        audience,
        450,
    )
    assert (started.done, started.issued, started.skipped, started.out_of_stock) == (False, 0, 0, 0)
    assert (started.end, started.not_reached) == (End.COUPON_ISSUANCE_END_UNSPECIFIED, 0)
    assert started.snapshot.startswith("snapshots/") and started.template_id == template.split("/")[1]

    async with issuances.worker():
        finished = await issuances.finished(request_id)
    assert (finished.members, finished.issued, finished.skipped, finished.out_of_stock) == (450, 450, 0, 0)
    assert await issuances.issued_to(campaign) == 450
    for member in (members[0], members[-1]):
        held = await issuances.stub.ListMemberCoupons(
            tasks_service_pb2.ListMemberCouponsRequest(member_id=member), metadata=ACME
        )
        assert [c.template_id for c in held.coupons] == [finished.template_id]
        assert (held.coupons[0].source.campaign, held.coupons[0].source.arm) == (campaign, "a")

    # Starting again is the same operation; other content under the request id is refused.
    assert await issuances.start(template, audience, request_id, campaign=campaign, arm="a") == finished
    other = await failure(issuances.start(template, audience, request_id, campaign=campaign, arm="b"))
    assert other.code() == grpc.StatusCode.ALREADY_EXISTS

    # A second issuance of the template to the same members finds each at its limit (1).
    again = unique("iss")
    await issuances.start(template, audience, again, campaign=campaign)
    async with issuances.worker():
        skipped = await issuances.finished(again)
    assert (skipped.issued, skipped.skipped, skipped.out_of_stock) == (0, 450, 0)
    assert await issuances.issued_to(campaign) == 450


async def test_members_left_when_the_stock_runs_out_are_counted(issuances: Issuances) -> None:
    template = await issuances.template(total_stock=30)
    audience, _ = await issuances.audience(50)
    request_id, campaign = unique("iss"), unique("campaign")
    await issuances.start(template, audience, request_id, campaign=campaign)
    async with issuances.worker():
        finished = await issuances.finished(request_id)
    assert (finished.members, finished.issued, finished.skipped, finished.out_of_stock) == (50, 30, 0, 20)
    assert (finished.end, finished.not_reached) == (End.COUPON_ISSUANCE_END_COMPLETED, 0)
    assert await issuances.issued_to(campaign) == 30


async def test_a_template_retired_while_it_runs_ends_the_operation_and_says_so(issuances: Issuances) -> None:
    template = await issuances.template(total_stock=1000)
    audience, _ = await issuances.audience(450)
    request_id, campaign = unique("iss"), unique("campaign")
    await issuances.start(template, audience, request_id, campaign=campaign)
    # The pages handed over as the workflow hands them, the template retired after the first.
    first = await issuances.page(request_id)
    assert (first.issuance.issued, first.issuance.done, first.issuance.end) == (200, False, 0)
    await issuances.stub.RetireCouponTemplate(
        tasks_service_pb2.RetireCouponTemplateRequest(name=template), metadata=ACME
    )
    ended = await issuances.page(request_id, first.next_page_token)
    assert (ended.issuance.done, ended.next_page_token) == (True, "")
    assert (ended.issuance.end, ended.issuance.issued, ended.issuance.not_reached) == (
        End.COUPON_ISSUANCE_END_TEMPLATE_RETIRED,
        200,
        250,
    )
    assert await issuances.get(request_id) == ended.issuance
    assert await issuances.issued_to(campaign) == 200


async def test_a_validity_that_ends_while_it_runs_ends_the_operation_and_says_so(
    issuances: Issuances,
) -> None:
    now = dt.datetime.now(dt.UTC)
    template = await issuances.template(
        total_stock=1000,
        valid_days=0,
        valid_from=stamp(now - dt.timedelta(days=1)),
        valid_until=stamp(now + dt.timedelta(days=1)),
    )
    audience, _ = await issuances.audience(250)
    request_id = unique("iss")
    await issuances.start(template, audience, request_id)
    first = await issuances.page(request_id)
    changed = await issuances.stub.GetCouponTemplate(
        tasks_service_pb2.GetCouponTemplateRequest(name=template), metadata=ACME
    )
    changed.valid_until.CopyFrom(stamp(now - dt.timedelta(hours=1)))
    await issuances.stub.UpdateCouponTemplate(
        tasks_service_pb2.UpdateCouponTemplateRequest(template=changed), metadata=ACME
    )
    ended = await issuances.page(request_id, first.next_page_token)
    assert (ended.issuance.end, ended.issuance.issued, ended.issuance.not_reached) == (
        End.COUPON_ISSUANCE_END_VALIDITY_ENDED,
        200,
        50,
    )


async def test_a_page_issued_again_issues_and_counts_nothing_twice(issuances: Issuances) -> None:
    template = await issuances.template(total_stock=1000)
    audience, members = await issuances.audience(250)
    request_id, campaign = unique("iss"), unique("campaign")
    await issuances.start(template, audience, request_id, campaign=campaign)
    # A worker issued the first page and died before its result was recorded: the page is issued
    # and counted, and the workflow will hand the same page over again.
    first = await issuances.page(request_id)
    assert (first.issuance.issued, first.issuance.done) == (200, False) and first.next_page_token
    assert (await issuances.page(request_id)).issuance == first.issuance
    # Another died halfway through the second page: two of its members hold their coupon already,
    # issued with the request id the page gives each member.
    for member in members[200:202]:
        await issuances.stub.IssueCoupon(
            tasks_service_pb2.IssueCouponRequest(
                template=template,
                member_id=member,
                source=coupons_pb2.CouponSource(campaign=campaign),
                request_id=f"couponIssuances/{request_id}/{member}",
            ),
            metadata=ACME,
        )

    async with issuances.worker():
        finished = await issuances.finished(request_id)
    assert (finished.members, finished.issued, finished.skipped, finished.out_of_stock) == (250, 250, 0, 0)
    assert await issuances.issued_to(campaign) == 250
    # The operation is done: a page handed over late changes nothing.
    late = await issuances.page(request_id, first.next_page_token)
    assert (late.issuance, late.next_page_token) == (finished, "")


async def test_bad_input_and_what_cannot_be_issued(issuances: Issuances) -> None:
    template = await issuances.template()
    audience, _ = await issuances.audience(1)

    def start(**fields: Any) -> Any:
        base: dict[str, Any] = {"template": template, "audience": audience, "request_id": unique("iss")}
        return issuances.stub.IssueCouponToAudience(
            tasks_service_pb2.IssueCouponToAudienceRequest(**{**base, **fields}), metadata=ACME
        )

    await bad(start(template="templates/x"), "template")
    await bad(start(audience="audience-1"), "audience")
    await bad(start(request_id=""), "request_id")
    await bad(start(request_id="a/b"), "request_id")
    await bad(start(source=coupons_pb2.CouponSource(campaign="x" * 129)), "source.campaign")
    missing = await failure(start(template="couponTemplates/never_made"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    nowhere = await failure(start(audience=f"audiences/{unique('aud')}"))
    assert nowhere.code() == grpc.StatusCode.NOT_FOUND
    retired = await issuances.template()
    await issuances.stub.RetireCouponTemplate(
        tasks_service_pb2.RetireCouponTemplateRequest(name=retired), metadata=ACME
    )
    refused = await failure(start(template=retired))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION

    get = issuances.stub.GetCouponIssuance
    await bad(get(tasks_service_pb2.GetCouponIssuanceRequest(name="issuances/x"), metadata=ACME), "name")
    unknown = await failure(issuances.get(unique("iss")))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    request_id = unique("iss")
    await issuances.start(template, audience, request_id)
    await bad(issuances.page(request_id, "not-a-page-token"), "page_token")
    assert (await issuances.get(request_id)).issued == 0


async def test_a_run_that_continues_as_new_after_every_page_issues_each_member_once(
    issuances: Issuances, worker_settings: Settings
) -> None:
    template = await issuances.template(total_stock=1000)
    audience, _ = await issuances.audience(450)
    request_id, campaign = unique("iss"), unique("campaign")
    # The suite's tasks server starts the operation's own workflow on a queue no worker polls;
    # this test runs the operation with a workflow of its own that continues as new every page.
    async with grpc.aio.insecure_channel(worker_settings.tasks_address) as channel:
        suite = tasks_service_pb2_grpc.TasksServiceStub(channel)
        await issuances.start(template, audience, request_id, stub=suite, campaign=campaign)
    idle = issuances.client.get_workflow_handle(workflow_id(TENANT_ACME, request_id))
    try:
        handle = await issuances.client.start_workflow(
            CouponIssuanceWorkflow.run,
            IssuanceInput(TENANT_ACME, request_id, pages_per_run=1),
            id=f"test-{request_id}",
            task_queue=issuances.settings.temporal_task_queue,
        )
        async with issuances.worker():
            result = await handle.result()
            histories = await runs(issuances.client, handle.id)
    finally:
        await idle.terminate()
    finished = await issuances.get(request_id)
    assert (finished.members, finished.issued, finished.skipped, finished.out_of_stock) == (450, 450, 0, 0)
    assert (result.done, result.issued, result.next_page_token) == (True, 450, "")
    assert await issuances.issued_to(campaign) == 450
    # Pages of 200, 200 and 50: three runs of one page each.
    assert len(histories) == 3
    for name, history in (("continued_as_new", histories[0]), ("last_run", histories[-1])):
        run = issuances.client.get_workflow_handle(handle.id, run_id=history.run_id)
        await keep_history(run, f"coupon_issuance_{name}")
