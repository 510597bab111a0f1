"""The console's handlers without a browser (aiohttp's test client): sign-in and its refusal, the
session cookie's protection, CSRF refusals, and every failure of a service call shown as a message
on a page with a fitting HTTP status (never a traceback)."""

from __future__ import annotations

import dataclasses
from http.cookies import SimpleCookie
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.test_utils import TestClient
from memberops.tagging.v1 import member_pb2, tagging_service_pb2

from console import i18n, session
from console.clients import Peers
from tests.conftest import ACME, TOKEN_ACME, unique
from tests.console.conftest import console_client, csrf_of

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub

Client = TestClient[web.Request, web.Application]
TRACEBACK = "Traceback"
ZH = i18n.translator("zh")


async def sign_in(client: Client, token: str = TOKEN_ACME) -> str:
    """Signs in through the form; returns the session's CSRF token (from the next page)."""
    form = await (await client.get("/signin")).text()
    reply = await client.post(
        "/signin",
        data={"token": token, "csrf_token": csrf_of(form), "next": "/journeys"},
        allow_redirects=False,
    )
    assert reply.status == 303, await reply.text()
    return csrf_of(await (await client.get("/journeys")).text())


def signed_in_as(client: Client, token: str) -> None:
    client.session.cookie_jar.update_cookies({session.SESSION_COOKIE: token})


async def test_signing_in_keeps_the_token_in_a_protected_cookie(service_peers: Peers) -> None:
    async with console_client(service_peers) as client:
        away = await client.get("/members?q=x&page_token=t", allow_redirects=False)
        assert (away.status, away.headers["Location"]) == (
            303,
            "/signin?next=/members?q%3Dx%26page_token%3Dt",
        )
        form = await (await client.get("/signin")).text()
        reply = await client.post(
            "/signin",
            data={"token": TOKEN_ACME, "csrf_token": csrf_of(form), "next": "/members"},
            allow_redirects=False,
        )
        assert (reply.status, reply.headers["Location"]) == (303, "/members")
        cookie = SimpleCookie(reply.headers["Set-Cookie"])[session.SESSION_COOKIE]
        assert cookie.value == TOKEN_ACME
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
        assert int(cookie["max-age"]) == session.SESSION_SECONDS
        page = await client.get("/members")
        assert page.status == 200 and "Server-Timing" in page.headers
        # No script runs and nothing loads from elsewhere; no other site frames the console.
        policy = page.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
        assert "<script" not in await page.text()


async def test_a_bad_token_is_refused_and_kept_nowhere(service_peers: Peers) -> None:
    async with console_client(service_peers) as client:
        form = await (await client.get("/signin")).text()
        reply = await client.post(
            "/signin", data={"token": "not-a-token-0123456789", "csrf_token": csrf_of(form)}
        )
        assert reply.status == 401
        text = await reply.text()
        assert ZH("signin.refused") in text and TRACEBACK not in text
        assert session.SESSION_COOKIE not in {c.key for c in client.session.cookie_jar}
        empty = await client.post("/signin", data={"token": " ", "csrf_token": csrf_of(form)})
        assert empty.status == 400


async def test_a_token_the_services_stop_accepting_signs_out(service_peers: Peers) -> None:
    async with console_client(service_peers) as client:
        signed_in_as(client, "revoked-token-0123456789")
        reply = await client.get("/journeys", allow_redirects=False)
        assert (reply.status, reply.headers["Location"]) == (303, "/signin?expired=1")
        assert SimpleCookie(reply.headers["Set-Cookie"])[session.SESSION_COOKIE].value == ""


async def test_posts_without_the_right_csrf_token_are_refused(service_peers: Peers) -> None:
    async with console_client(service_peers) as client:
        csrf = await sign_in(client)
        key = unique("j")
        for data, headers in (
            ({}, {}),
            ({"csrf_token": "forged"}, {}),
            ({"csrf_token": session.csrf_for("another-token-0123456789")}, {}),
            ({"csrf_token": csrf}, {"Origin": "https://elsewhere.example"}),
        ):
            refused = await client.post(f"/journeys/{key}/pause", data=data, headers=headers)
            assert refused.status == 403, data
            assert ZH("csrf.refused") in await refused.text()
        # The same form with the right token reaches the service (which knows no such journey).
        reached = await client.post(f"/journeys/{key}/pause", data={"csrf_token": csrf})
        assert reached.status == 404
        # Signing in needs the sign-in form's own token too.
        signed_out = await client.post("/signout", data={"csrf_token": csrf}, allow_redirects=False)
        assert signed_out.status == 303
        login = await client.post("/signin", data={"token": TOKEN_ACME, "csrf_token": "guess"})
        assert login.status == 403


async def test_service_errors_are_messages_with_their_status(
    service_peers: Peers, nothing_served: str, tagging_stub: TaggingServiceAsyncStub
) -> None:
    member_id = unique("m")
    await tagging_stub.UpsertMember(
        tagging_service_pb2.UpsertMemberRequest(
            member=member_pb2.Member(member_id=member_id, profile=member_pb2.Profile(nickname="Mei"))
        ),
        metadata=ACME,
    )
    async with console_client(service_peers) as client:
        await sign_in(client)
        invalid = await client.get("/journeys/Bad%20Key/report")
        text = await invalid.text()
        assert invalid.status == 400 and ZH("error.invalid") in text and "<code>name</code>" in text
        missing = await client.get(f"/journeys/{unique('j')}/report")
        assert missing.status == 404 and "error.not_found" not in await missing.text()
        assert (await client.get(f"/members/{unique('m')}")).status == 404
        assert (await client.get("/no/such/page")).status == 404
    # A service without the RPC (UNIMPLEMENTED) and one that does not answer (UNAVAILABLE).
    bare = Peers(nothing_served, nothing_served, nothing_served)
    async with console_client(bare) as client:
        signed_in_as(client, TOKEN_ACME)
        member = await client.get(f"/members/{member_id}")
        text = await member.text()
        assert (
            member.status == 501 and ZH("error.unimplemented", service="tagging", method="GetMember") in text
        )
        overview = await client.get("/overview")
        text = await overview.text()
        assert (
            overview.status == 200
            and ZH("error.unimplemented", service="journeys", method="ListAnomalies") in text
        )
        assert TRACEBACK not in text
    down = Peers("127.0.0.1:1", "127.0.0.1:1", "127.0.0.1:1")
    async with console_client(down) as client:
        signed_in_as(client, TOKEN_ACME)
        journeys = await client.get("/journeys")
        assert journeys.status == 200 and ZH("error.unavailable", service="journeys") in await journeys.text()
        gone = await client.get(f"/members/{member_id}")
        assert gone.status == 503 and ZH("error.unavailable", service="tagging") in await gone.text()
        form = await (await client.get("/signin")).text()
        unreachable = await client.post("/signin", data={"token": TOKEN_ACME, "csrf_token": csrf_of(form)})
        assert unreachable.status == 503
    # One section's failure leaves the rest of the page: the member page with journeys lacking its RPC.
    mixed = dataclasses.replace(service_peers, journeys_address=nothing_served)
    async with console_client(mixed) as client:
        signed_in_as(client, TOKEN_ACME)
        page = await client.get(f"/members/{member_id}")
        text = await page.text()
        assert page.status == 200 and "Mei" in text
        assert ZH("error.unimplemented", service="journeys", method="ListMemberJourneys") in text


async def test_the_language_switch_is_a_cookie_and_stays_on_this_site(service_peers: Peers) -> None:
    async with console_client(service_peers) as client:
        english = await client.get("/lang/en?next=/signin", allow_redirects=False)
        assert (english.status, english.headers["Location"]) == (303, "/signin")
        assert "Tenant token" in await (await client.get("/signin")).text()
        away = await client.get("/lang/zh?next=//elsewhere.example/x", allow_redirects=False)
        assert away.headers["Location"] == "/"
        assert "租户令牌" in await (await client.get("/signin")).text()
