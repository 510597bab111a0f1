"""The console in a real browser (Debian's chromium driven by Playwright, nothing downloaded): sign
in, find a member and see their tags and the journey a worker runs them through with its first
message, open the journeys, activate one through its confirmation, read its report's uplift, and
switch the language. Each page is saved as a screenshot under docs/screenshots/ (the README shows
two of them)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from memberops.journeys.v1 import journeys_service_pb2
from memberops.tagging.v1 import facts_pb2, tagging_service_pb2
from playwright.async_api import Browser, Page, async_playwright, expect
from temporalio.testing import WorkflowEnvironment

from console import i18n
from console.clients import Peers
from runtime.config import Settings
from runtime.db import Database
from tests.conftest import ACME, REPO_ROOT, TOKEN_ACME, unique
from tests.console.conftest import console_client
from tests.journeys.helpers import create, simple
from tests.waiting import eventually
from tests.workflows.journey_helpers import journey, member_message, running, start
from workflows.journeys.definition import EventMatch, Goal, Send, Step, Wait
from workflows.worker import Resources

if TYPE_CHECKING:
    from memberops.journeys.v1.journeys_service_pb2_grpc import JourneyServiceAsyncStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub

CHROMIUM = "/usr/bin/chromium"
# No network, no background services, no GPU: a browser that only loads the console.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
ZH = i18n.translator("zh")
EN = i18n.translator("en")


@pytest.fixture
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install -y chromium)"
        )
    return CHROMIUM


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


async def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def seed_member(stub: TaggingServiceAsyncStub) -> tuple[str, str, str]:
    """A member reachable by SMS with one paid order; returns (member id, nickname, order id) once
    the order's tags show."""
    member_id, nickname = unique("m"), unique("Lin")
    await stub.UpsertMember(
        tagging_service_pb2.UpsertMemberRequest(member=member_message(member_id, nickname=nickname)),
        metadata=ACME,
    )
    paid = Timestamp()
    paid.FromDatetime(dt.datetime.now(dt.UTC) - dt.timedelta(hours=2))
    line = facts_pb2.OrderLine(
        line_id="1", sku="tea", category="tea", brand="westlake", quantity=2, unit_price_minor=4_900
    )
    order = facts_pb2.Order(
        order_id=unique("o"),
        member_id=member_id,
        paid_time=paid,
        amount_minor=9_800,
        store="app",
        lines=[line],
    )
    await stub.RecordOrder(tagging_service_pb2.RecordOrderRequest(order=order), metadata=ACME)

    async def tagged() -> bool:
        reply = await stub.GetMemberTags(
            tagging_service_pb2.GetMemberTagsRequest(member=f"members/{member_id}"), metadata=ACME
        )
        return any(t.dimension == "categories_bought" and t.value == "tea" for t in reply.tags)

    await eventually(tagged, "the order's real-time tags")
    return member_id, nickname, order.order_id


async def enrol(
    env: WorkflowEnvironment,
    settings: Settings,
    resources: Resources,
    db: Database,
    journeys: JourneyServiceAsyncStub,
    member_id: str,
) -> str:
    """Runs the member through a live journey on a worker (a welcome SMS, then a week's wait) until
    the journeys service lists the run and its sent welcome; returns the journey's key. The run
    stays active at its wait: the test server's clock only skips while someone awaits a result."""
    definition = journey(
        Step(id="welcome", send=Send(template="hello")),
        Step(id="wait-7d", wait=Wait(duration="7d")),
        name="Welcome",
    )
    request = journeys_service_pb2.ListMemberJourneysRequest(member=f"members/{member_id}")

    async def welcomed() -> bool:
        reply = await journeys.ListMemberJourneys(request, metadata=ACME)
        return any(m.step_id == "welcome" and m.outcome == "sent" for m in reply.messages)

    async with running(env, settings, resources):
        await start(env, settings, db, definition, member_id)
        await eventually(welcomed, "the journey's welcome in the member's messages")
    return definition.key


async def sign_in_and_find(page: Page, base: str, member_id: str, nickname: str) -> None:
    """Signs in with the keyboard only (the token field has the focus, Enter submits) and opens the
    member's page from a search by nickname."""
    await page.goto(f"{base}/members")
    await expect(page.get_by_label(ZH("signin.token"))).to_be_focused()
    await shot(page, "01-signin")
    await page.keyboard.type(TOKEN_ACME)
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(f"{base}/members")
    await expect(page.get_by_role("heading", name=ZH("members.title"))).to_be_visible()
    await page.get_by_label(ZH("members.query")).fill(nickname)
    await page.get_by_role("button", name=ZH("common.search")).click()
    result = page.locator("#results").get_by_role("link", name=member_id)
    await expect(result).to_be_visible()
    await shot(page, "02-member-search")
    await result.click()


async def activate_and_read(page: Page, base: str, key: str) -> None:
    """The journeys list, then the journey's report: activating it asks for a confirmation first,
    then it is active; nobody entered yet, so treated against holdout differs by 0 within [-1, 1],
    too small to tell."""
    await page.get_by_role("link", name=ZH("nav.journeys")).click()
    await page.get_by_role("link", name=ZH("state.draft"), exact=True).click()
    await expect(page.get_by_role("heading", name=ZH("journeys.title"))).to_be_visible()
    await shot(page, "04-journeys")
    await page.goto(f"{base}/journeys/{key}/report")
    await expect(page.locator("#journey-state")).to_have_text(ZH("state.draft"))
    await page.get_by_role("link", name=ZH("action.activate"), exact=True).click()
    await expect(page.get_by_text(ZH("action.activate_warning"))).to_be_visible()
    await shot(page, "05-journey-confirm")
    await page.get_by_role("button", name=f"{ZH('common.confirm')}: {ZH('action.activate')}").click()
    await expect(page.locator("#journey-state")).to_have_text(ZH("state.active"))
    await expect(page.get_by_role("status")).to_have_text(ZH("action.done", action=ZH("action.activate")))
    uplift = page.locator("#uplift tbody tr").first
    await expect(uplift.locator("td.uplift")).to_have_text("+0.0 pp (-100.0 pp \u2013 +100.0 pp)")
    await expect(uplift).to_contain_text(ZH("report.too_small"))
    await expect(page.locator("svg[role=img]")).to_contain_text("hello")
    await shot(page, "06-journey-report")


async def test_an_operator_works_through_the_console(
    browser: Browser,
    service_peers: Peers,
    tagging_stub: TaggingServiceAsyncStub,
    journeys_stub: JourneyServiceAsyncStub,
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    member_id, nickname, order_id = await seed_member(tagging_stub)
    welcome = await enrol(
        time_skipping_env, worker_settings, resources, journeys_db, journeys_stub, member_id
    )
    definition = dataclasses.replace(
        simple(unique("console")),
        name="Tea lovers",
        holdout_percent=10,
        goal=Goal(event=EventMatch(kind="order")),
    )
    await create(journeys_stub, definition)
    key = definition.key
    async with console_client(service_peers) as client:
        base = str(client.make_url("")).rstrip("/")
        page = await browser.new_page(viewport={"width": 1200, "height": 800}, locale="zh-CN")
        await sign_in_and_find(page, base, member_id, nickname)

        # Their profile, current tags, their order, the journey they are in (at the step of its
        # newest message) and what it sent them.
        await expect(page.get_by_role("heading", name=nickname)).to_be_visible()
        await expect(page.locator("#tag-list")).to_contain_text("categories_bought=tea")
        await expect(page.locator("#order-list")).to_contain_text(order_id)
        await expect(page.locator("#order-list")).to_contain_text("98.00")
        run = page.locator("#runs tbody tr")
        await expect(run).to_have_count(1)
        for cell, text in enumerate((f"{welcome} v1", "active", "treated", "welcome")):
            await expect(run.locator("td").nth(cell)).to_have_text(text)
        journeys_section = page.locator(
            "section", has=page.get_by_role("heading", name=ZH("member.journeys"))
        )
        sent = journeys_section.locator("tr", has_text=f"{welcome} · welcome")
        await expect(sent.locator("td").nth(2)).to_have_text("sms")
        await expect(sent.locator("td").nth(3)).to_have_text("sent")
        await shot(page, "03-member")

        await activate_and_read(page, base, key)

        # English, kept for the next pages.
        await page.get_by_role("link", name="English").click()
        await expect(
            page.get_by_role("heading", name=f"{EN('report.title')}: Tea lovers ({key})")
        ).to_be_visible()
        await expect(page.locator("#uplift")).to_contain_text(EN("report.too_small"))
        await shot(page, "07-journey-report-en")
        await page.get_by_role("link", name=EN("nav.overview")).click()
        await expect(page.get_by_role("heading", name=EN("overview.title"))).to_be_visible()
        # Every KPI read answers: charts, no message.
        await expect(
            page.locator("section", has=page.get_by_role("heading", name=EN("overview.orders"))).locator(
                "svg"
            )
        ).to_be_visible()
        lifecycle = page.locator("section", has=page.get_by_role("heading", name=EN("overview.lifecycle")))
        await expect(lifecycle.locator("svg")).to_contain_text("new")
        await expect(page.locator("#members-total")).to_be_visible()
        await expect(page.get_by_role("alert")).to_have_count(0)
        await shot(page, "08-overview-en")
