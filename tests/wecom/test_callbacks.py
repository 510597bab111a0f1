"""The journeys service's WeCom callback endpoint, over HTTP as WeCom calls it: URL verification,
forged and misdirected callbacks refused with nothing stored, repeats stored once, the tenant's
sync signalled, malformed and oversized bodies refused while the endpoint keeps serving."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from runtime.config import Settings
from runtime.db import Database
from tests.conftest import unique
from tests.waiting import eventually
from tests.wecom.callbacks_world import (
    AES_KEY,
    CORP_ID,
    TENANT,
    TOKEN,
    counters,
    event_xml,
    put_connector,
    serving_callbacks,
    signed,
    staff_edit,
)
from workflows.wecom import client as sync_client
from workflows.wecom import crypto


@pytest.fixture(scope="module")
async def endpoint(
    tasks_settings: Settings, dev_server_env: WorkflowEnvironment, db: Database
) -> AsyncIterator[str]:
    async with serving_callbacks(tasks_settings, dev_server_env, db) as url:
        yield url


async def stored(db: Database, external_userid: str) -> list[str]:
    async with db.transaction(TENANT, readonly=True) as conn:
        rows = await conn.fetch(
            "SELECT change_type FROM journeys.wecom_callbacks WHERE external_userid = $1", external_userid
        )
    return [row["change_type"] for row in rows]


async def post(http: aiohttp.ClientSession, url: str, query: dict[str, str], body: bytes) -> tuple[int, str]:
    async with http.post(url, params=query, data=body) as response:
        return response.status, await response.text()


async def test_url_verification_answers_the_decrypted_echostr(
    endpoint: str, http: aiohttp.ClientSession
) -> None:
    echo = unique("echo")
    encrypted = crypto.encrypt(AES_KEY, CORP_ID, echo.encode())
    query = {"timestamp": "1700000000", "nonce": "n0nce", "echostr": encrypted}
    query["msg_signature"] = crypto.signature(TOKEN, query["timestamp"], query["nonce"], encrypted)
    async with http.get(endpoint, params=query) as response:
        assert response.status == 200
        assert await response.text() == echo

    query["msg_signature"] = crypto.signature("another-token", query["timestamp"], query["nonce"], encrypted)
    async with http.get(endpoint, params=query) as response:
        assert response.status == 403
        assert echo not in await response.text()


async def test_a_callback_is_stored_once_however_often_wecom_repeats_it_and_wakes_the_sync(
    endpoint: str, http: aiohttp.ClientSession, db: Database, dev_server_env: WorkflowEnvironment
) -> None:
    external_userid = unique("wm")
    message = signed(staff_edit(external_userid))
    received, refused, _ = await counters(db)

    for _ in range(3):
        assert await post(http, endpoint, message.query, message.body) == (200, "success")

    assert await stored(db, external_userid) == ["edit_external_contact"]
    assert (await counters(db))[:2] == (received + 1, refused)
    handle = dev_server_env.client.get_workflow_handle(sync_client.workflow_id(TENANT))

    async def signalled() -> list[str]:
        try:
            history = await handle.fetch_history()
        except RPCError as error:
            # The signal goes out after the answer: the run may not be there yet.
            if error.status != RPCStatusCode.NOT_FOUND:
                raise
            return []
        return [
            e.workflow_execution_signaled_event_attributes.signal_name
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        ]

    assert sync_client.CALLBACKS in await eventually(signalled, "the sync was signalled")


async def test_forged_and_misdirected_callbacks_are_refused_and_nothing_is_stored(
    endpoint: str, http: aiohttp.ClientSession, db: Database
) -> None:
    external_userid = unique("wm")
    message = staff_edit(external_userid)
    received, refused, _ = await counters(db)

    forged = signed(message, token="not-the-token")
    assert (await post(http, endpoint, forged.query, forged.body))[0] == 403
    # Signed with the right token, but encrypted for another corp.
    elsewhere = signed(message, receiver="wwanothercorp01")
    assert (await post(http, endpoint, elsewhere.query, elsewhere.body))[0] == 403
    # The signature of another ciphertext.
    good, other = signed(message), signed(message)
    assert (await post(http, endpoint, other.query, good.body))[0] == 403
    # No signature at all.
    assert (await post(http, endpoint, {}, good.body))[0] == 403

    assert await stored(db, external_userid) == []
    assert (await counters(db))[:2] == (received, refused + 4)


async def test_malformed_and_oversized_bodies_are_refused_and_the_endpoint_keeps_serving(
    endpoint: str, http: aiohttp.ClientSession, db: Database
) -> None:
    good = signed(event_xml(event="change_external_tag", change_type="update", extra="<Id>et1</Id>"))
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><xml><Encrypt>&b;</Encrypt></xml>'
    )
    _, refused, _ = await counters(db)

    for body in (b"<xml><Encrypt>", b"not xml at all", bomb, b"<xml>" + b"<a/>" * 500 + b"</xml>"):
        assert (await post(http, endpoint, good.query, body))[0] == 400
    assert (await post(http, endpoint, good.query, b"<xml>" + b" " * 200_000 + b"</xml>"))[0] == 413
    # Correctly signed and encrypted, but the message inside is not XML.
    garbage = signed(b"<xml><Event>change_external_tag")
    assert (await post(http, endpoint, garbage.query, garbage.body))[0] == 400

    assert (await counters(db))[1] == refused + 6
    assert await post(http, endpoint, good.query, good.body) == (200, "success")


async def test_an_unknown_tenant_or_one_without_a_connector_is_not_found(
    endpoint: str, http: aiohttp.ClientSession
) -> None:
    message = signed(event_xml(event="change_external_tag", change_type="shuffle"))
    base = endpoint.rsplit("/", 1)[0]
    assert (await post(http, f"{base}/nobody", message.query, message.body))[0] == 404
    # A configured tenant that put no connector.
    assert (await post(http, f"{base}/hooli", message.query, message.body))[0] == 404


async def test_with_the_connector_off_callbacks_are_verified_and_dropped(
    endpoint: str, http: aiohttp.ClientSession, db: Database
) -> None:
    external_userid = unique("wm")
    message = signed(staff_edit(external_userid))
    await put_connector(db, enabled=False)
    try:
        assert await post(http, endpoint, message.query, message.body) == (200, "success")
        forged = signed(message.body, token="not-the-token")
        assert (await post(http, endpoint, forged.query, forged.body))[0] == 403
    finally:
        await put_connector(db)
    assert await stored(db, external_userid) == []
