"""WeComApi against the local WeCom server: the token cached and refreshed, busy answers waited
out without loss, quotas waited out to the next minute, errors named by code, secrets kept out of
logs and errors."""

from __future__ import annotations

import aiohttp
import pytest
import structlog.testing

from deploy.wecom_local import LocalWeCom
from tests.conftest import unique
from tests.ports import free_port
from tests.wecom.conftest import running_local_wecom
from workflows.wecom.api import Credentials, TokenCache, WeComApi, WeComBusy, WeComError, WeComUnavailable

# Minute-aligned, so a test knows where the quota's minute ends.
MINUTE_START = 1_800_000_000.0


class Sleeps:
    """The client's injected sleep: moves the local server's clock on instead of waiting."""

    def __init__(self, wecom: LocalWeCom) -> None:
        self.wecom = wecom
        self.taken: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.taken.append(seconds)
        self.wecom.advance(seconds)


def client(
    wecom: LocalWeCom, http: aiohttp.ClientSession, *, secret: str | None = None, **options: object
) -> WeComApi:
    credentials = Credentials(wecom.url, wecom.corp.corp_id, wecom.corp.secret if secret is None else secret)
    return WeComApi(http, credentials, tokens=TokenCache(), **options)  # type: ignore[arg-type]


def customers(wecom: LocalWeCom, count: int) -> tuple[str, list[str]]:
    staff = unique("staff")
    ids = [unique("wm") for _ in range(count)]
    for external_userid in ids:
        wecom.add_customer(external_userid, follow_users=[staff])
    return staff, ids


async def test_the_token_is_fetched_once_for_many_calls(
    local_wecom: LocalWeCom, http: aiohttp.ClientSession
) -> None:
    api = client(local_wecom, http)
    before = len(local_wecom.calls("gettoken"))
    group = await api.add_corp_tag(group_name=unique("group")[:30], tags=["a", "b"])
    staff, ids = customers(local_wecom, 4)
    for external_userid in ids:
        await api.mark_tag(userid=staff, external_userid=external_userid, add_tag=[group["tag"][0]["id"]])
    assert len(local_wecom.calls("gettoken")) == before + 1
    assert {t.tag_name for i in ids for t in local_wecom.customer_tags(i)} == {"a"}


async def test_a_token_expired_mid_run_is_refreshed_and_no_call_is_lost(
    local_wecom: LocalWeCom, http: aiohttp.ClientSession
) -> None:
    api = client(local_wecom, http)
    group = await api.add_corp_tag(group_name=unique("group")[:30], tags=["x"])
    tag_id = group["tag"][0]["id"]
    staff, ids = customers(local_wecom, 4)
    tokens_before = len(local_wecom.calls("gettoken"))
    for index, external_userid in enumerate(ids):
        if index == 2:
            local_wecom.expire_tokens()  # WeCom ends the token early: the next call answers 42001
        await api.mark_tag(userid=staff, external_userid=external_userid, add_tag=[tag_id])
    marks = [
        call for call in local_wecom.calls("externalcontact/mark_tag") if call.body["external_userid"] in ids
    ]
    assert [call.errcode for call in marks] == [0, 0, 42001, 0, 0]
    assert len(local_wecom.calls("gettoken")) == tokens_before + 1
    assert all(local_wecom.customer_tags(i)[0].tag_id == tag_id for i in ids)
    # A token the server no longer knows (40014) is refreshed the same way.
    local_wecom.revoke_tokens()
    await api.mark_tag(userid=staff, external_userid=ids[0], remove_tag=[tag_id])
    assert local_wecom.customer_tags(ids[0]) == []
    assert local_wecom.calls("externalcontact/mark_tag")[-2].errcode == 40014


async def test_a_45009_storm_is_backed_off_without_loss(http: aiohttp.ClientSession) -> None:
    async with running_local_wecom() as wecom:
        sleeps = Sleeps(wecom)
        api = client(wecom, http, sleep=sleeps)
        group = await api.add_corp_tag(group_name="storm", tags=["t"])
        staff, (external_userid,) = customers(wecom, 1)
        wecom.storm(45009, 5, api="externalcontact/mark_tag")
        await api.mark_tag(userid=staff, external_userid=external_userid, add_tag=[group["tag"][0]["id"]])
        assert [call.errcode for call in wecom.calls("externalcontact/mark_tag")] == [45009] * 5 + [0]
        assert sleeps.taken == [1, 2, 4, 8, 16]
        assert [t.tag_name for t in wecom.customer_tags(external_userid)] == ["t"]
        # -1 (busy) and 45033 (concurrency) are waited out the same way, on any API.
        wecom.storm(-1, 1)
        wecom.storm(45033, 1)
        assert [g["group_name"] for g in await api.get_corp_tag_list()] == ["storm"]
        assert sleeps.taken[5:] == [1, 2]


async def test_the_backoff_is_capped_at_a_minute_and_gives_up_after_the_budget(
    http: aiohttp.ClientSession,
) -> None:
    async with running_local_wecom() as wecom:
        sleeps = Sleeps(wecom)
        api = client(wecom, http, sleep=sleeps, max_wait_seconds=300)
        wecom.storm(45033, 100)
        with pytest.raises(WeComBusy) as raised:
            await api.get_corp_tag_list()
        assert raised.value.errcode == 45033
        # 1+2+4+8+16+32+60+60+60 = 243; one more minute would pass the 300 s budget.
        assert sleeps.taken == [1, 2, 4, 8, 16, 32, 60, 60, 60]
        assert len(wecom.calls("externalcontact/get_corp_tag_list")) + len(wecom.calls("gettoken")) == 10


async def test_a_quota_exceeded_is_waited_out_to_the_next_minute(http: aiohttp.ClientSession) -> None:
    async with running_local_wecom(clock=lambda: MINUTE_START) as wecom:
        sleeps = Sleeps(wecom)
        api = client(wecom, http, sleep=sleeps)
        group = await api.add_corp_tag(group_name="quota", tags=["q"])
        wecom.set_quota("externalcontact/mark_tag", 3)
        staff, ids = customers(wecom, 5)
        for external_userid in ids:
            await api.mark_tag(userid=staff, external_userid=external_userid, add_tag=[group["tag"][0]["id"]])
        # The fourth call met the quota: 45009 for the rest of the minute, waited out (1+2+...+32 = 63 s
        # crosses into the next minute); nothing hammered the API in between and nothing was lost.
        assert [call.errcode for call in wecom.calls("externalcontact/mark_tag")] == [0, 0, 0] + [
            45009
        ] * 6 + [0, 0]
        assert sleeps.taken == [1, 2, 4, 8, 16, 32]
        assert wecom.now() >= MINUTE_START + 60
        assert all(wecom.customer_tags(i) for i in ids)


async def test_an_errcode_retrying_cannot_fix_is_a_wecom_error_with_its_code(
    local_wecom: LocalWeCom, http: aiohttp.ClientSession
) -> None:
    api = client(local_wecom, http)
    _, (external_userid,) = customers(local_wecom, 1)
    with pytest.raises(WeComError) as raised:
        await api.mark_tag(userid=unique("stranger"), external_userid=external_userid, add_tag=["etT1"])
    assert raised.value.errcode == 40003
    local_wecom.add_staff(stranger := unique("stranger"))
    with pytest.raises(WeComError) as raised:
        await api.mark_tag(userid=stranger, external_userid=external_userid, add_tag=["etT1"])
    assert raised.value.errcode == 84061
    local_wecom.storm(48002, 1)  # an errcode the client knows nothing of: not retried
    with pytest.raises(WeComError) as raised:
        await api.get_corp_tag_list()
    assert raised.value.errcode == 48002
    assert type(raised.value) is WeComError


async def test_a_bad_secret_is_40001_and_the_secret_is_in_no_error_text(
    local_wecom: LocalWeCom, http: aiohttp.ClientSession
) -> None:
    wrong = unique("wrong-secret")
    api = client(local_wecom, http, secret=wrong)
    with pytest.raises(WeComError) as raised:
        await api.get_corp_tag_list()
    assert raised.value.errcode == 40001
    assert wrong not in str(raised.value)
    assert wrong not in repr(Credentials(local_wecom.url, "corp", wrong))


async def test_no_answer_is_wecom_unavailable_naming_no_secret(http: aiohttp.ClientSession) -> None:
    secret = unique("secret")
    closed = WeComApi(
        http, Credentials(f"http://127.0.0.1:{free_port()}", "corp", secret), tokens=TokenCache()
    )
    with pytest.raises(WeComUnavailable) as raised:
        await closed.get_corp_tag_list()
    assert raised.value.errcode == -2
    assert secret not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


async def test_an_http_error_is_wecom_unavailable(
    local_wecom: LocalWeCom, http: aiohttp.ClientSession
) -> None:
    credentials = Credentials(
        f"{local_wecom.url}/elsewhere", local_wecom.corp.corp_id, local_wecom.corp.secret
    )
    with pytest.raises(WeComUnavailable) as raised:
        await WeComApi(http, credentials, tokens=TokenCache()).get_corp_tag_list()
    assert "HTTP 404" in str(raised.value)


async def test_the_secret_and_tokens_never_reach_the_logs(http: aiohttp.ClientSession) -> None:
    async with running_local_wecom() as wecom:
        api = client(wecom, http, sleep=Sleeps(wecom))
        with structlog.testing.capture_logs() as captured:
            await api.get_corp_tag_list()
            wecom.expire_tokens()
            wecom.storm(45009, 2)
            await api.get_corp_tag_list()
            with pytest.raises(WeComError):
                await client(wecom, http, secret=wecom.corp.secret + "x").get_corp_tag_list()
        assert {entry["event"] for entry in captured} >= {
            "wecom token refused, refreshing",
            "wecom busy, backing off",
        }
        text = repr(captured)
        assert wecom.corp.secret not in text
        assert len(wecom.corp.tokens) == 2
        assert not [token for token in wecom.corp.tokens if token in text]


async def test_customer_details_and_messages_with_their_results(
    local_wecom: LocalWeCom, http: aiohttp.ClientSession
) -> None:
    api = client(local_wecom, http)
    staff, (friend,) = customers(local_wecom, 1)
    other_staff, (strangers_friend,) = customers(local_wecom, 1)
    group = await api.add_corp_tag(group_name=unique("level")[:30], tags=["gold"])
    await api.mark_tag(userid=staff, external_userid=friend, add_tag=[group["tag"][0]["id"]])
    details = await api.get_external_contact(friend)
    assert details["external_contact"]["external_userid"] == friend
    (follow,) = details["follow_user"]
    assert follow["userid"] == staff
    assert follow["tags"] == [
        {"group_name": group["group_name"], "tag_name": "gold", "tag_id": group["tag"][0]["id"], "type": 1}
    ]
    unknown = unique("wm")
    msgid, fail_list = await api.add_msg_template(
        sender=staff, external_userids=[friend, strangers_friend, unknown], content="你好"
    )
    assert fail_list == [unknown]
    results = {r["external_userid"]: r for r in await api.get_groupmsg_send_result(msgid=msgid, userid=staff)}
    assert results[friend]["status"] == 1 and results[friend]["send_time"] > 0
    assert results[strangers_friend]["status"] == 2
    assert set(results) == {friend, strangers_friend}
    (message,) = [m for m in local_wecom.messages() if m.msgid == msgid]
    assert (message.sender, message.content) == (staff, "你好")
    assert await api.get_groupmsg_send_result(msgid=msgid, userid=other_staff) == []


async def test_the_tag_library_through_the_client(
    local_wecom: LocalWeCom, http: aiohttp.ClientSession
) -> None:
    api = client(local_wecom, http)
    created = await api.add_corp_tag(group_name=unique("city")[:30], tags=["上海", "北京"])
    shanghai, beijing = (tag["id"] for tag in created["tag"])
    more = await api.add_corp_tag(
        group_name="ignored with a group id", group_id=created["group_id"], tags=["深圳"]
    )
    assert more["group_id"] == created["group_id"] and [t["name"] for t in more["tag"]] == ["深圳"]
    await api.edit_corp_tag(id=shanghai, name="沪")
    await api.edit_corp_tag(id=created["group_id"], name="城市-" + created["group_id"][-6:])
    (group,) = await api.get_corp_tag_list(group_ids=[created["group_id"]])
    assert group["group_name"] == "城市-" + created["group_id"][-6:]
    assert [t["name"] for t in group["tag"]] == ["沪", "北京", "深圳"]
    await api.del_corp_tag(tag_ids=[beijing])
    (group,) = await api.get_corp_tag_list(tag_ids=[shanghai, beijing])
    assert [t["id"] for t in group["tag"]] == [shanghai]
    await api.del_corp_tag(group_ids=[created["group_id"]])
    assert await api.get_corp_tag_list(group_ids=[created["group_id"]]) == []
    with pytest.raises(WeComError) as raised:
        await api.edit_corp_tag(id=shanghai, name="gone")
    assert raised.value.errcode == 40068
