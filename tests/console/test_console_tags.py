"""The Tags pages without a browser: the catalog by category (retired dimensions only when asked),
a dimension's definition with readable rules, its distribution with coverage and its weekly
history as charts, and every failure as a message with its status (never a traceback)."""

from __future__ import annotations

import datetime as dt
import html
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.test_utils import TestClient
from memberops.tagging.v1 import tagging_service_pb2

from console import i18n, render, tag_trends
from console.clients import Peers
from tests.conftest import ACME, TOKEN_ACME
from tests.console.conftest import console_client
from tests.console.test_console_pages import TRACEBACK, signed_in_as
from tests.tagging.test_catalog import create, dimension, frequency

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub

Client = TestClient[web.Request, web.Application]
ZH = i18n.translator("zh")
EN = i18n.translator("en")


async def page(client: Client, path: str) -> tuple[int, str]:
    reply = await client.get(path)
    text = await reply.text()
    assert TRACEBACK not in text
    return reply.status, html.unescape(text)


async def test_the_catalog_groups_dimensions_by_category_and_hides_retired_ones(
    service_peers: Peers, tagging_stub: TaggingServiceAsyncStub
) -> None:
    kept, retired = dimension(), dimension()
    for name in (kept, retired):
        await create(tagging_stub, frequency(name))
    await tagging_stub.RetireTagDefinition(
        tagging_service_pb2.RetireTagDefinitionRequest(name=f"tagDefinitions/{retired}"), metadata=ACME
    )
    async with console_client(service_peers) as client:
        signed_in_as(client, TOKEN_ACME)
        status, text = await page(client, "/tags")
        assert status == 200
        # The built-in catalog under its categories, each dimension linking to its page.
        for label in ("tagcategory.member", "tagcategory.transaction"):
            assert ZH(label) in text
        assert text.index(ZH("tagcategory.member")) < text.index(ZH("tagcategory.transaction"))
        assert 'href="/tags/lifecycle"' in text and f'href="/tags/{kept}"' in text
        assert f'href="/tags/{retired}"' not in text
        assert "heavy, light, none" in text and ZH("refresh.real_time") in text
        everything = (await page(client, "/tags?retired=1"))[1]
        assert f'href="/tags/{retired}"' in everything and ZH("tags.retired") in everything


async def test_a_dimension_shows_its_rules_distribution_and_history(
    service_peers: Peers, tagging_stub: TaggingServiceAsyncStub
) -> None:
    name = dimension()
    await create(tagging_stub, frequency(name))
    async with console_client(service_peers) as client:
        signed_in_as(client, TOKEN_ACME)
        status, text = await page(client, f"/tags/{name}")
        assert status == 200
        assert "orders_per_month(window_days=90) ≥ 4" in text and "always" in text
        assert ZH("tags.first_rule_wins") in text
        assert 'id="coverage"' in text and text.count("<svg") == 2 and 'id="trend"' in text
        # A model dimension names its model; another span of weeks asks that many points.
        status, text = await page(client, "/lang/en?next=/tags/lifecycle%3Fweeks%3D4")
        assert status == 200
        assert "lifecycle(" in text and EN("tags.history", weeks=4) in text
        assert EN("tags.by_model") in text


async def test_unknown_dimensions_and_bad_requests_are_messages(
    service_peers: Peers, nothing_served: str
) -> None:
    async with console_client(service_peers) as client:
        signed_in_as(client, TOKEN_ACME)
        status, text = await page(client, f"/tags/{dimension()}")
        assert status == 404 and "not found" in text.lower()
        status, text = await page(client, "/tags/Not%20A%20Name")
        assert status == 400 and ZH("error.invalid") in text
        status, text = await page(client, "/tags/lifecycle?weeks=3")
        assert status == 400 and ZH("tags.bad_weeks") in text
    bare = Peers(nothing_served, nothing_served, nothing_served)
    async with console_client(bare) as client:
        signed_in_as(client, TOKEN_ACME)
        unimplemented = ZH("error.unimplemented", service="tagging", method="ListTagDefinitions")
        status, text = await page(client, "/tags")
        assert status == 501 and unimplemented in text
        status, text = await page(client, "/tags/lifecycle")
        assert (
            status == 501 and ZH("error.unimplemented", service="tagging", method="GetTagDefinition") in text
        )
        # The overview's trend panels say so too, once for both.
        status, text = await page(client, "/overview")
        assert (
            status == 200
            and text.count(ZH("error.unimplemented", service="tagging", method="GetTagStats")) == 2
        )


def test_weekly_points_end_a_day_apart_by_weeks_and_the_last_is_now() -> None:
    points = tag_trends.moments(dt.date(2026, 12, 7), 3)
    zone = render.TIME_ZONE
    assert points == [
        ("2026-11-23", dt.datetime(2026, 11, 24, tzinfo=zone)),
        ("2026-11-30", dt.datetime(2026, 12, 1, tzinfo=zone)),
        ("2026-12-07", None),
    ]
