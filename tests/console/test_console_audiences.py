"""The audience pages' handlers without a browser: the editor counts a draft and its count follows
the rule, the service's violations land next to the fields they name, saving twice makes one
audience, an audience's page shows its rule, size and a snapshot's arms, and failures of the
audience service are messages with fitting statuses."""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.test_utils import TestClient
from memberops.audience.v1 import audience_pb2, audience_service_pb2
from memberops.tagging.v1 import member_pb2, tagging_service_pb2

from console import audience_draft, i18n
from console.clients import Peers
from tests.conftest import ACME, unique
from tests.console.conftest import console_client, csrf_of
from tests.console.test_console_pages import sign_in

if TYPE_CHECKING:
    from memberops.audience.v1.audience_service_pb2_grpc import AudienceServiceAsyncStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub

Client = TestClient[web.Request, web.Application]
ZH = i18n.translator("zh")
COUNT = re.compile(r'id="draft-count"><span class="figure">([\d,]+)</span>')
REQUEST_ID = re.compile(r'name="request_id" value="([0-9a-f]+)"')
DRAFT = re.compile(r'name="draft" value="([^"]*)"')


async def members_in(tagging_stub: TaggingServiceAsyncStub, city: str, genders: list[int]) -> None:
    for gender in genders:
        member = member_pb2.Member(
            member_id=unique(),
            profile=member_pb2.Profile(city=city, gender=gender),  # type: ignore[arg-type]
        )
        await tagging_stub.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=member), metadata=ACME)


def in_city(city: str, **more: str) -> dict[str, str]:
    return {
        "combine": "all",
        "c0.kind": "profile",
        "c0.field": "city",
        "c0.operator": "eq",
        "c0.value": city,
        **more,
    }


async def listed(client: Client, audience_id: str) -> bool:
    """Whether the list shows the audience (as static, with its count), following its pages."""
    path = "/audiences"
    while True:
        text = await (await client.get(path)).text()
        row = re.search(rf'href="/audiences/{audience_id}">.*?</tr>', text, re.S)
        if row:
            return (
                ZH("audiences.static") in row.group(0)
                and re.search(r'class="num">2</td>', row.group(0)) is not None
            )
        more = re.search(r'href="(\?[^"]*page_token=[^"]+)"', text)
        if more is None:
            return False
        path = "/audiences" + more.group(1).replace("&amp;", "&")


def counted(html: str) -> int:
    found = COUNT.search(html)
    assert found, html
    return int(found.group(1).replace(",", ""))


async def test_the_count_follows_the_rule_as_it_changes(
    service_peers: Peers, tagging_stub: TaggingServiceAsyncStub
) -> None:
    city = unique("city")
    female, male = member_pb2.GENDER_FEMALE, member_pb2.GENDER_MALE
    await members_in(tagging_stub, city, [female, female, male])
    async with console_client(service_peers) as client:
        await sign_in(client)
        page = await client.get("/audience-builder", params=in_city(city))
        assert page.status == 200
        assert counted(await page.text()) == 3
        # "Add a profile field" is a submit: the form comes back with a new, empty condition.
        added = await client.get("/audience-builder", params=in_city(city, add="profile"))
        assert 'name="c1.kind" value="profile"' in await added.text()
        narrowed = in_city(city, **{"c1.kind": "profile", "c1.field": "gender", "c1.value": "GENDER_FEMALE"})
        assert counted(await (await client.get("/audience-builder", params=narrowed)).text()) == 2
        either = {**narrowed, "combine": "any", "c1.value": "GENDER_MALE"}
        assert counted(await (await client.get("/audience-builder", params=either)).text()) == 3
        removed = await client.get("/audience-builder", params={**narrowed, "remove": "1"})
        text = await removed.text()
        assert counted(text) == 3 and 'name="c1.kind"' not in text


async def test_violations_are_shown_at_the_fields_they_name(service_peers: Peers) -> None:
    async with console_client(service_peers) as client:
        await sign_in(client)
        unknown = {"c0.kind": "tag", "c0.dimension": "no_such_dimension", "c0.match": "has_any_value"}
        page = await client.get("/audience-builder", params=unknown)
        text = await page.text()
        assert page.status == 400
        # The service's message sits by the dimension's field.
        assert re.search(r'id="c0-dimension-error" role="alert">[^<]*no_such_dimension', text), text
        not_a_number = {"c0.kind": "profile", "c0.field": "age", "c0.operator": "ge", "c0.value": "thirty"}
        page = await client.get("/audience-builder", params=not_a_number)
        assert page.status == 400
        assert re.search(r'id="c0-value-error" role="alert">[^<]*thirty', await page.text())
        bad_window = {"c0.kind": "window", "c0.measure": "orders", "c0.days": "99999", "c0.value": "1"}
        page = await client.get("/audience-builder", params=bad_window)
        assert page.status == 400
        assert 'id="c0-days-error"' in await page.text()
        breakdown = await client.get("/audience-builder", params={"by": "no_such_dimension"})
        assert breakdown.status == 200
        assert "no_such_dimension" in await breakdown.text()


async def test_saving_twice_makes_one_audience_and_its_page_shows_it(
    service_peers: Peers, tagging_stub: TaggingServiceAsyncStub, audience_stub: AudienceServiceAsyncStub
) -> None:
    city = unique("city")
    await members_in(tagging_stub, city, [member_pb2.GENDER_FEMALE, member_pb2.GENDER_MALE])
    audience_id = unique("aud")
    async with console_client(service_peers) as client:
        await sign_in(client)
        editor = await (await client.get("/audience-builder", params=in_city(city))).text()
        request_id = REQUEST_ID.search(editor)
        draft = DRAFT.search(editor)
        assert request_id and draft
        form = {
            "csrf_token": csrf_of(editor),
            "request_id": request_id.group(1),
            "draft": draft.group(1).replace("&amp;", "&"),
            "audience_id": audience_id,
            "display_name": "城市会员",
        }
        first = await client.post("/audience-builder", data=form, allow_redirects=False)
        again = await client.post("/audience-builder", data=form, allow_redirects=False)
        assert first.status == again.status == 303, await first.text()
        assert first.headers["Location"] == again.headers["Location"] == f"/audiences/{audience_id}?created=1"
        got = await audience_stub.GetAudience(
            audience_service_pb2.GetAudienceRequest(name=f"audiences/{audience_id}"), metadata=ACME
        )
        assert got.version == 1 and got.display_name == "城市会员"

        page = await client.get(f"/audiences/{audience_id}")
        text = await page.text()
        assert page.status == 200
        assert f"city = &#34;{city}&#34;" in text and ZH("audiences.rule_all") in text
        assert re.search(r'id="audience-count"><span class="figure">2</span>', text)
        assert 'id="breakdown-chart"><svg' in text
        assert await listed(client, audience_id)

        # The same id again under another request id: the service refuses, the form says so.
        taken = await client.post(
            "/audience-builder", data={**form, "request_id": "another-request"}, allow_redirects=False
        )
        assert taken.status == 409
        assert audience_id in await taken.text()
        bad_id = await client.post("/audience-builder", data={**form, "audience_id": "Not An Id"})
        assert bad_id.status == 400
        assert re.search(r'class="field-error" role="alert">must be', await bad_id.text())


async def test_an_audience_page_lists_its_snapshots_with_their_arms(
    service_peers: Peers, audience_stub: AudienceServiceAsyncStub
) -> None:
    everyone = audience_pb2.AudienceRule(all=audience_pb2.AudienceRuleList())
    ids = [unique("aud"), unique("aud")]
    for audience_id in ids:
        await audience_stub.CreateAudience(
            audience_service_pb2.CreateAudienceRequest(
                audience=audience_pb2.Audience(audience_id=audience_id, rule=everyone)
            ),
            metadata=ACME,
        )
    snapshots = [
        await audience_stub.CreateSnapshot(
            audience_service_pb2.CreateSnapshotRequest(
                audience=f"audiences/{ids[0]}",
                splits=[
                    audience_pb2.SplitArm(name="a", share_percent=90 - n),
                    audience_pb2.SplitArm(name="holdout", share_percent=10 + n),
                ],
                request_id=unique("snap"),
            ),
            metadata=ACME,
        )
        for n in range(2)
    ]
    async with console_client(service_peers) as client:
        await sign_in(client)
        text = await (await client.get(f"/audiences/{ids[0]}")).text()
        listed = text.partition('id="snapshots"')[2]
        # Newest first, each with its arms' shares and sizes.
        assert listed.index(snapshots[1].name) < listed.index(snapshots[0].name)
        for snapshot in snapshots:
            tables = listed.partition(snapshot.name)[2].partition("</table>")[0]
            for arm in snapshot.arms:
                assert re.search(
                    rf'<td>{arm.name}</td><td class="num">{arm.share_percent}%</td>'
                    rf'<td class="num">{arm.member_count:,}</td>',
                    tables,
                ), tables
        other = await (await client.get(f"/audiences/{ids[1]}")).text()
        assert ZH("audiences.no_snapshots") in other and 'id="snapshots"' not in other
        unknown = await client.get(f"/audiences/{unique('aud')}")
        assert unknown.status == 404


async def test_an_audience_service_that_is_down_or_missing_is_a_message(
    service_peers: Peers, nothing_served: str
) -> None:
    for address, key, status in (
        ("127.0.0.1:1", "error.unavailable", 503),
        (nothing_served, "error.unimplemented", 501),
    ):
        peers = dataclasses.replace(service_peers, audience_address=address)
        async with console_client(peers) as client:
            await sign_in(client)
            listing = await client.get("/audiences")
            text = await listing.text()
            assert listing.status == 200 and "Traceback" not in text
            assert ZH(key, service="audience", method="ListAudiences") in text
            editor = await client.get("/audience-builder", params=in_city("x"))
            text = await editor.text()
            assert editor.status == 200 and "Traceback" not in text
            assert 'id="draft-count"' not in text
            assert ZH(key, service="audience", method="CountAudience") in text
            page = await client.get("/audiences/some")
            assert page.status == status


def test_a_draft_survives_its_own_form() -> None:
    """What the editor writes into its URL reads back as the same draft."""
    draft = audience_draft.parse(
        {
            **in_city("杭州"),
            "combine": "any",
            "c1.kind": "window",
            "c1.measure": "spend",
            "c1.days": "90",
            "c1.operator": "between",
            "c1.value": "100, 300.5",
            "c3.kind": "tag",
            "c3.dimension": "lifecycle",
            "c3.values": "new\uff0cactive",
        }
    )
    assert audience_draft.parse(dict(urllib.parse.parse_qsl(urllib.parse.urlencode(draft.query())))) == draft
    built = audience_draft.build(draft)
    assert not built.errors
    spend = built.rule.any.rules[1].condition
    assert [v.number for v in spend.values] == [10_000, 30_050]  # minor units
    assert list(built.rule.any.rules[2].tag.values) == ["new", "active"]
