"""The local WeCom server keeps WeCom's rules the clients rely on: callbacks encrypted and signed as
WeCom does, the tag library's rules, the `/_local` controls over HTTP, and `python -m deploy.wecom_local`."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from deploy.wecom_local import LocalWeCom, Refusal
from tests.conftest import unique
from tests.ports import free_port
from tests.waiting import eventually
from tests.wecom.conftest import AES_KEY, running_local_wecom
from workflows.wecom import crypto
from workflows.wecom.api import Credentials, TokenCache, WeComApi


class Receiver:
    """A callback endpoint that checks what arrives as MemberOps' endpoint must."""

    def __init__(self, wecom: LocalWeCom) -> None:
        # The token, key and corp id the endpoint was configured with (a copy: the test may change
        # what the server signs with afterwards).
        self.callback = wecom.callback
        self.events: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        callback = self.callback
        query = request.query
        encrypted = query["echostr"] if request.method == "GET" else _text(await request.text(), "Encrypt")
        crypto.verify(callback.token, query["timestamp"], query["nonce"], encrypted, query["msg_signature"])
        plain = crypto.decrypt(callback.encoding_aes_key, callback.corp_id, encrypted)
        if request.method == "GET":
            return web.Response(text=plain.decode())
        self.events.append({child.tag: child.text or "" for child in ET.fromstring(plain)})
        return web.Response(text="success")


def _text(xml: str, tag: str) -> str:
    found = ET.fromstring(xml).find(tag)
    assert found is not None and found.text
    return found.text


@contextlib.asynccontextmanager
async def receiving(wecom: LocalWeCom) -> AsyncIterator[Receiver]:
    """Points the server's callbacks at a Receiver for the block."""
    port = free_port()
    before = wecom.callback.url
    wecom.set_callback_url(f"http://127.0.0.1:{port}/wecom/callback/acme")
    receiver = Receiver(wecom)
    app = web.Application()
    app.router.add_route("*", "/wecom/callback/{tenant}", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield receiver
    finally:
        wecom.set_callback_url(before)
        await runner.cleanup()


async def test_staff_editing_tags_sends_the_encrypted_signed_callback(local_wecom: LocalWeCom) -> None:
    staff, customer = unique("staff"), unique("wm")
    local_wecom.add_customer(customer, follow_users=[staff])
    tag_id, _ = await local_wecom.staff_add_tag("level", unique("t")[:30])
    async with receiving(local_wecom) as receiver:
        assert await local_wecom.verify_callback_url()
        delivery = await local_wecom.staff_edit_tags(staff, customer, add=[tag_id])
        assert delivery is not None and (delivery.status, delivery.answer) == (200, "success")
        (event,) = receiver.events
    assert event["ToUserName"] == local_wecom.corp.corp_id
    assert event["MsgType"] == "event"
    assert (event["Event"], event["ChangeType"]) == ("change_external_contact", "edit_external_contact")
    assert (event["UserID"], event["ExternalUserID"]) == (staff, customer)
    assert [t.tag_id for t in local_wecom.customer_tags(customer)] == [tag_id]


async def test_a_receiver_with_another_token_refuses_the_callback(local_wecom: LocalWeCom) -> None:
    staff, customer = unique("staff"), unique("wm")
    local_wecom.add_customer(customer, follow_users=[staff])
    tag_id = local_wecom.corp.add_corp_tag({"group_name": "g", "tag": [{"name": unique("t")[:30]}]})[
        "tag_group"
    ]["tag"][0]["id"]
    async with receiving(local_wecom) as receiver:
        right = local_wecom.callback
        local_wecom.callback = type(right)(right.url, right.corp_id, "another-token", AES_KEY)
        try:
            delivery = await local_wecom.staff_edit_tags(staff, customer, add=[tag_id])
        finally:
            local_wecom.callback = right
        assert delivery is not None and delivery.status == 500  # the receiver raised CallbackRefused
        assert receiver.events == []


async def test_tag_library_rules(local_wecom: LocalWeCom) -> None:
    corp = local_wecom.corp
    name = unique("dim")[:30]
    first = corp.add_corp_tag({"group_name": name, "tag": [{"name": "a"}]})["tag_group"]
    # The same group name again joins the group; a tag name already there is 40071.
    second = corp.add_corp_tag({"group_name": name, "tag": [{"name": "b"}]})["tag_group"]
    assert second["group_id"] == first["group_id"]
    with pytest.raises(Refusal) as refused:
        corp.add_corp_tag({"group_id": first["group_id"], "tag": [{"name": "a"}]})
    assert refused.value.errcode == 40071
    with pytest.raises(Refusal) as refused:
        corp.add_corp_tag({"group_name": "x" * 31, "tag": [{"name": "a"}]})
    assert refused.value.errcode == 40072
    listed = corp.get_corp_tag_list({"group_id": [first["group_id"]]})["tag_group"]
    assert [t["name"] for t in listed[0]["tag"]] == ["a", "b"]
    only_b = corp.get_corp_tag_list({"tag_id": [second["tag"][0]["id"]]})["tag_group"]
    assert [t["name"] for g in only_b for t in g["tag"]] == ["b"]
    # Renaming to a sibling's name is 40071; deleting a group's last tag deletes the group, and a
    # deleted tag leaves the customers holding it.
    with pytest.raises(Refusal) as refused:
        corp.edit_corp_tag({"id": second["tag"][0]["id"], "name": "a"})
    assert refused.value.errcode == 40071
    staff, customer = unique("staff"), unique("wm")
    local_wecom.add_customer(customer, follow_users=[staff])
    corp.mark_tag({"userid": staff, "external_userid": customer, "add_tag": [first["tag"][0]["id"]]})
    corp.del_corp_tag({"tag_id": [first["tag"][0]["id"], second["tag"][0]["id"]]})
    assert first["group_id"] not in corp.groups
    assert local_wecom.customer_tags(customer) == []
    with pytest.raises(Refusal) as refused:
        corp.mark_tag({"userid": staff, "external_userid": customer, "add_tag": [first["tag"][0]["id"]]})
    assert refused.value.errcode == 40068


async def test_tokens_expire_for_real(http: aiohttp.ClientSession) -> None:
    async with running_local_wecom(expires_in=600) as wecom:
        query = {"corpid": wecom.corp.corp_id, "corpsecret": wecom.corp.secret}
        async with http.get(f"{wecom.url}/cgi-bin/gettoken", params=query) as response:
            answer = await response.json()
        assert (answer["errcode"], answer["expires_in"]) == (0, 600)

        async def tag_list(token: str | None) -> Any:
            params = {} if token is None else {"access_token": token}
            async with http.post(
                f"{wecom.url}/cgi-bin/externalcontact/get_corp_tag_list", params=params, json={}
            ) as response:
                assert response.status == 200
                return await response.json()

        assert (await tag_list(answer["access_token"]))["errcode"] == 0
        assert (await tag_list(None))["errcode"] == 41001
        assert (await tag_list("forged"))["errcode"] == 40014
        wecom.advance(600)
        assert (await tag_list(answer["access_token"]))["errcode"] == 42001
        async with http.get(f"{wecom.url}/cgi-bin/gettoken", params=query) as response:
            assert (await response.json())["access_token"] != answer["access_token"]
        bad = {**query, "corpid": "another"}
        async with http.get(f"{wecom.url}/cgi-bin/gettoken", params=bad) as response:
            assert (await response.json())["errcode"] == 40013
        assert all("corpsecret" not in call.body for call in wecom.calls())


async def test_the_local_controls_over_http(local_wecom: LocalWeCom, http: aiohttp.ClientSession) -> None:
    staff, customer = unique("staff"), unique("wm")

    async def post(path: str, body: dict[str, Any]) -> Any:
        async with http.post(f"{local_wecom.url}/_local/{path}", json=body) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    await post("customers", {"external_userid": customer, "name": "Li Lei", "follow_users": [staff]})
    added = await post("staff_add_tag", {"group_name": "vip", "tag_name": unique("gold")[:30]})
    edited = await post(
        "staff_edit_tags", {"userid": staff, "external_userid": customer, "add": [added["tag_id"]]}
    )
    assert edited == {"callback": None}  # no callback URL configured on this server
    async with http.get(f"{local_wecom.url}/_local/customers/{customer}/tags") as response:
        (held,) = await response.json()
    assert held["tag_id"] == added["tag_id"]
    async with http.post(
        f"{local_wecom.url}/_local/staff_edit_tags",
        json={"userid": staff, "external_userid": customer, "add": ["etT-nothing"]},
    ) as response:
        assert (response.status, (await response.json())["errcode"]) == (400, 40068)


async def test_python_dash_m_serves_the_local_wecom(http: aiohttp.ClientSession) -> None:
    port = free_port()
    secret = unique("secret")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "deploy.wecom_local",
        *(
            "--port",
            str(port),
            "--corp-id",
            "ww-cli",
            "--secret",
            secret,
            "--token",
            "tok",
            "--aes-key",
            AES_KEY,
        ),
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:

        async def token() -> str | None:
            try:
                async with http.get(
                    f"http://127.0.0.1:{port}/cgi-bin/gettoken",
                    params={"corpid": "ww-cli", "corpsecret": secret},
                ) as response:
                    answer = await response.json()
                    return str(answer["access_token"])
            except aiohttp.ClientConnectionError:
                return None

        assert await eventually(token, "did the local WeCom answer gettoken")
    finally:
        process.terminate()
        assert await process.wait() == 0


async def test_a_callback_unanswered_is_retried_three_times_and_can_be_sent_again(
    local_wecom: LocalWeCom,
) -> None:
    staff, customer = unique("staff"), unique("wm")
    local_wecom.add_customer(customer, follow_users=[staff])
    tag_id, _ = await local_wecom.staff_add_tag("retry", unique("t")[:30])
    before = local_wecom.callback.url
    local_wecom.set_callback_url(f"http://127.0.0.1:{free_port()}/wecom/callback/acme")  # nobody listens
    try:
        unanswered = await local_wecom.staff_edit_tags(staff, customer, add=[tag_id])
    finally:
        local_wecom.set_callback_url(before)
    assert unanswered is not None and (unanswered.status, unanswered.attempts) == (0, 4)
    async with receiving(local_wecom) as receiver:
        again = await local_wecom.redeliver(unanswered)
        assert (again.status, again.answer, again.query) == (200, "success", unanswered.query)
        (event,) = receiver.events
    assert (event["ChangeType"], event["ExternalUserID"]) == ("edit_external_contact", customer)


async def test_mark_tag_calls_back_when_asked_to_echo_api_changes(http: aiohttp.ClientSession) -> None:
    async with running_local_wecom(echo_api_tags=True) as wecom, receiving(wecom) as receiver:
        staff, customer = unique("staff"), unique("wm")
        wecom.add_customer(customer, follow_users=[staff])
        tag_id, _ = await wecom.staff_add_tag("echo", "t")
        receiver.events.clear()
        api = WeComApi(
            http, Credentials(wecom.url, wecom.corp.corp_id, wecom.corp.secret), tokens=TokenCache()
        )
        await api.mark_tag(userid=staff, external_userid=customer, add_tag=[tag_id])

        async def echoed() -> list[dict[str, str]]:
            return receiver.events

        (event,) = await eventually(echoed, "did mark_tag call back edit_external_contact")
        assert (event["UserID"], event["ExternalUserID"]) == (staff, customer)
