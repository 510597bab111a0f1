"""The Tags pages in a real browser (Debian's chromium through Playwright, as
tests/console/test_console_browser.py launches it): sign in, open the catalog, open lifecycle and
see its distribution and history charts, then a dimension whose members' values changed week by
week and see that history drawn. Saves docs/screenshots/11-tags.png and 12-tag-dimension.png."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from playwright.async_api import Browser, expect

from console import render, tag_trends
from console.clients import Peers
from tests.conftest import TOKEN_ACME, unique
from tests.console.conftest import console_client
from tests.console.test_console_browser import ZH, browser, chromium, shot  # noqa: F401
from tests.tagging.facts_helpers import an_order, record_order, stamp
from tests.tagging.test_catalog import create, dimension
from tests.tagging.test_tag_history import recompute
from tests.tagging.test_tag_stats_as_of import probed_buyer, registered

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub

DAY = dt.timedelta(days=1)


async def weekly_history(stub: TaggingServiceAsyncStub) -> str:
    """A new dimension over six new members, each buying in a different week, its history written
    at the console's own weekly moments (as a rebuild would): buyers move from week to week."""
    name, probe = dimension(), unique("probe")
    await create(stub, probed_buyer(name, probe))
    now = dt.datetime.now(dt.UTC)
    for i in range(6):
        member_id = await registered(stub, probe, now - 60 * DAY)
        for days_ago in (7 * i + 2, 7 * i + 4)[: 1 + i % 2]:
            await record_order(stub, an_order(member_id, paid_time=stamp(now - days_ago * DAY)))
    await recompute(stub, name)
    today = dt.datetime.now(render.TIME_ZONE).date()
    for _, as_of in tag_trends.moments(today, 8)[:-1]:
        await recompute(stub, name, as_of=as_of)
    return name


async def test_an_operator_reads_the_tag_catalog_and_a_dimensions_history(
    browser: Browser,  # noqa: F811
    service_peers: Peers,
    tagging_stub: TaggingServiceAsyncStub,
) -> None:
    name = await weekly_history(tagging_stub)
    async with console_client(service_peers) as client:
        base = str(client.make_url("")).rstrip("/")
        page = await browser.new_page(viewport={"width": 1200, "height": 800}, locale="zh-CN")
        await page.goto(f"{base}/tags")
        await expect(page.get_by_label(ZH("signin.token"))).to_be_focused()
        await page.keyboard.type(TOKEN_ACME)
        await page.keyboard.press("Enter")
        await expect(page).to_have_url(f"{base}/tags")
        await expect(page.get_by_role("heading", name=ZH("tagcategory.member"))).to_be_visible()
        await expect(page.locator(f"#dimension-{name}")).to_contain_text("regular, buyer, none")
        await shot(page, "11-tags")

        await page.locator("#dimension-lifecycle").get_by_role("link", name="lifecycle").click()
        await expect(page).to_have_url(f"{base}/tags/lifecycle")
        distribution = page.locator("section", has=page.get_by_role("heading", name=ZH("tags.distribution")))
        await expect(distribution.locator("svg")).to_contain_text("churned")
        await expect(page.locator("#coverage")).to_be_visible()
        await expect(page.locator("#trend svg")).to_be_visible()
        await expect(page.get_by_role("alert")).to_have_count(0)

        await page.goto(f"{base}/tags/{name}")
        await expect(page.locator("#value-rules")).to_contain_text("order_count(window_days=10) ≥ 2")
        await expect(page.locator("#distribution-table")).to_contain_text("none")
        trend = page.locator("#trend svg")
        for value in ("regular", "buyer", "none"):
            await expect(trend).to_contain_text(value)
        await expect(page.get_by_role("alert")).to_have_count(0)
        await shot(page, "12-tag-dimension")
