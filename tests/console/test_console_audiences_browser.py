"""The audience builder in a real browser (the launch of test_console_browser.py): sign in, open
the audiences, build "lifecycle is new" with the keyboard and see its count, add a city condition
and see the count change, save it and read it on its own page with a campaign's snapshot and its
arms. Saves docs/screenshots/09-… and 10-…."""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING

from google.protobuf.timestamp_pb2 import Timestamp
from memberops.audience.v1 import audience_pb2, audience_service_pb2
from memberops.tagging.v1 import member_pb2, tagging_service_pb2
from playwright.async_api import Browser, expect

from console.clients import Peers
from tests.conftest import ACME, TOKEN_ACME, unique
from tests.console.conftest import console_client
from tests.console.test_console_browser import ZH, browser, chromium, shot  # noqa: F401
from tests.waiting import eventually

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub


async def new_members(stub: TaggingServiceAsyncStub, city: str, count: int) -> None:
    """`count` members registered yesterday in `city`, once tagging has them as new."""
    registered = Timestamp()
    registered.FromDatetime(dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    ids = [unique("m") for _ in range(count)]
    for member_id in ids:
        profile = member_pb2.Profile(city=city, register_time=registered)
        await stub.UpsertMember(
            tagging_service_pb2.UpsertMemberRequest(
                member=member_pb2.Member(member_id=member_id, profile=profile)
            ),
            metadata=ACME,
        )

    async def all_new() -> bool:
        for member_id in ids:
            reply = await stub.GetMemberTags(
                tagging_service_pb2.GetMemberTagsRequest(member=f"members/{member_id}"), metadata=ACME
            )
            if not any(t.dimension == "lifecycle" and t.value == "new" for t in reply.tags):
                return False
        return True

    await eventually(all_new, "the members' lifecycle tag")


async def test_an_operator_builds_an_audience_and_saves_it(
    browser: Browser,  # noqa: F811
    service_peers: Peers,
    tagging_stub: TaggingServiceAsyncStub,
    audience_stub: AudienceServiceAsyncStub,
) -> None:
    city = unique("Hangzhou")
    await new_members(tagging_stub, city, 3)
    await new_members(tagging_stub, unique("Ningbo"), 1)  # new, elsewhere: the city narrows the count
    audience_id = unique("new-in-city").lower().replace("_", "-")
    async with console_client(service_peers) as client:
        base = str(client.make_url("")).rstrip("/")
        page = await browser.new_page(viewport={"width": 1200, "height": 800}, locale="zh-CN")
        await page.goto(f"{base}/audiences")
        # Typed only once the field has the focus the page gives it: keys sent before that are lost
        # (under load the sign-in then failed with a token missing its first characters).
        await expect(page.get_by_label(ZH("signin.token"))).to_be_focused()
        await page.keyboard.type(TOKEN_ACME)
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("heading", name=ZH("audiences.title"))).to_be_visible()
        await page.get_by_role("link", name=ZH("audiences.new")).click()

        # Lifecycle is new: add a tag condition, choose, and press Enter in the values field.
        await page.get_by_role("button", name=f"+ {ZH('audiences.kind_tag')}").click()
        await page.locator("#c0-dimension").select_option("lifecycle")
        await page.locator("#c0-values").fill("new")
        await page.locator("#c0-values").press("Enter")
        count = page.locator("#draft-count .figure")
        await expect(count).to_have_text(re.compile(r"^[\d,]+$"))
        everyone_new = int((await count.inner_text()).replace(",", ""))
        assert everyone_new >= 4

        # And in the city: the count changes to the three members there.
        await page.get_by_role("button", name=f"+ {ZH('audiences.kind_profile')}").click()
        await page.locator("#c1-value").fill(city)
        await page.locator("#c1-value").press("Enter")
        await expect(count).to_have_text("3")
        await expect(page.locator("#breakdown-chart svg")).to_contain_text("new")
        await expect(page.get_by_role("alert")).to_have_count(0)
        await shot(page, "09-audience-builder")

        await page.get_by_label(ZH("audiences.id")).fill(audience_id)
        await page.get_by_label(ZH("audiences.name")).fill("杭州新会员")
        await page.get_by_role("button", name=ZH("audiences.save_button")).click()
        await expect(page).to_have_url(f"{base}/audiences/{audience_id}?created=1")
        await expect(page.get_by_role("status")).to_have_text(ZH("audiences.created"))
        await expect(page.locator("#audience-count")).to_have_text("3")
        await expect(page.locator("#audience-rule")).to_contain_text("lifecycle any of new")
        await expect(page.locator("#audience-rule")).to_contain_text(f'city = "{city}"')
        await expect(page.locator("#breakdown-chart svg")).to_contain_text("new")

        # A campaign freezes it into arms: the page lists the snapshot with each arm's size.
        frozen = await audience_stub.CreateSnapshot(
            audience_service_pb2.CreateSnapshotRequest(
                audience=f"audiences/{audience_id}",
                splits=[
                    audience_pb2.SplitArm(name="a", share_percent=45),
                    audience_pb2.SplitArm(name="b", share_percent=45),
                    audience_pb2.SplitArm(name="holdout", share_percent=10),
                ],
                request_id=unique("campaign"),
            ),
            metadata=ACME,
        )
        await page.reload()
        listed = page.locator("#snapshots table", has_text=frozen.name)
        rows = [rf"^\s*{a.name}\s*{a.share_percent}%\s*{a.member_count}\s*$" for a in frozen.arms]
        rows.append(rf"^\s*{ZH('audiences.total')}\s*3\s*$")
        await expect(listed.locator("tbody tr")).to_have_text([re.compile(row) for row in rows])
        await shot(page, "10-audience")
