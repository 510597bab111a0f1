"""The local WeCom server: WeCom's API paths over the in-memory corp, and `LocalWeCom`, the handle
tests and `make up` drive it with (the same controls the `/_local` routes offer over HTTP).

Every API answers HTTP 200 with `errcode`/`errmsg` as WeCom does. Before an API's own rules, a call
meets, in order: an injected storm (the next N answers are a given errcode), the access_token check
(41001 missing, 40014 unknown, 42001 expired), and the API's per-minute quota (45009).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from deploy.wecom_local import callbacks, controls
from deploy.wecom_local.callbacks import Callback, Delivery
from deploy.wecom_local.corp import BAD_JSON, Corp, Message, Refusal

# The APIs served, by method: path under /cgi-bin/.
GET_APIS = ("gettoken", "externalcontact/get")
POST_APIS = (
    "externalcontact/get_corp_tag_list",
    "externalcontact/add_corp_tag",
    "externalcontact/edit_corp_tag",
    "externalcontact/del_corp_tag",
    "externalcontact/mark_tag",
    "externalcontact/add_msg_template",
    "externalcontact/get_groupmsg_send_result",
)
# Query parameters never kept in the calls log.
_SECRET_QUERY = frozenset({"access_token", "corpsecret"})


@dataclass(frozen=True)
class Call:
    """One API call the server answered: the API, its JSON body (or query, secrets left out) and
    the errcode answered."""

    api: str
    body: dict[str, Any]
    errcode: int


@dataclass(frozen=True)
class HeldTag:
    group_id: str
    group_name: str
    tag_id: str
    tag_name: str


class LocalWeCom:
    """One corp's WeCom on a local port."""

    def __init__(
        self,
        *,
        corp_id: str = "ww-local-corp",
        secret: str = "local-secret",
        token: str = "local-callback-token",
        encoding_aes_key: str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        callback_url: str = "",
        agent_id: str = "",
        expires_in: int = 7200,
        clock: Callable[[], float] = time.time,
        echo_api_tags: bool = False,
    ) -> None:
        """`echo_api_tags`: a successful mark_tag also calls back `edit_external_contact`, as a staff
        edit does. WeCom documents the callback for staff's edits and is silent about its own API's;
        this is the worst case, for testing that a change MemberOps made is not pulled back."""
        self._base_clock = clock
        self._echo_api_tags = echo_api_tags
        self._echoes: set[asyncio.Task[Delivery | None]] = set()
        self._offset = 0.0
        self.corp = Corp(corp_id=corp_id, secret=secret, clock=self.now, expires_in=expires_in)
        self.callback = Callback(callback_url, corp_id, token, encoding_aes_key, agent_id)
        self._storm: list[tuple[int, str | None]] = []
        self._calls: list[Call] = []
        self._deliveries: list[Delivery] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._url = ""

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application()
        app.router.add_routes(
            [web.get(f"/cgi-bin/{api}", self._handle) for api in GET_APIS]
            + [web.post(f"/cgi-bin/{api}", self._handle) for api in POST_APIS]
        )
        controls.add_routes(app, self)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0][1]
        self._url = f"http://{host}:{bound}"
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        await asyncio.gather(*self._echoes, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        """The base URL clients use (`Credentials.base_url`, MEMBEROPS_WECOM_API_URL)."""
        return self._url

    # --- the clock ---------------------------------------------------------------------------------

    def now(self) -> float:
        return self._base_clock() + self._offset

    def advance(self, seconds: float) -> None:
        """Moves the server's clock on (token expiry, quota minutes): a test's injected sleep."""
        self._offset += seconds

    # --- the WeCom API -----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        api = request.path.removeprefix("/cgi-bin/")
        body: dict[str, Any] = {k: v for k, v in request.query.items() if k not in _SECRET_QUERY}
        try:
            if request.method == "POST":
                try:
                    parsed = json.loads(await request.read() or b"{}")
                except ValueError as error:
                    raise Refusal(BAD_JSON) from error
                if not isinstance(parsed, dict):
                    raise Refusal(BAD_JSON)
                body = parsed
            answer = self._answer(api, request, body)
        except Refusal as refusal:
            answer = refusal.answer()
        self._calls.append(Call(api, body, int(answer["errcode"])))
        if self._echo_api_tags and api == "externalcontact/mark_tag" and answer["errcode"] == 0:
            echo = asyncio.create_task(self._edited(body["userid"], body["external_userid"]))
            self._echoes.add(echo)
            echo.add_done_callback(self._echoes.discard)
        return web.json_response(answer)

    def _answer(self, api: str, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        for index, (errcode, only) in enumerate(self._storm):
            if only is None or only == api:
                del self._storm[index]
                raise Refusal(errcode)
        corp = self.corp
        if api == "gettoken":
            corp.count_call(api)
            return corp.gettoken(request.query.get("corpid", ""), request.query.get("corpsecret", ""))
        corp.check_token(request.query.get("access_token"))
        corp.count_call(api)
        if api == "externalcontact/get":
            return corp.get_external_contact(request.query.get("external_userid", ""))
        handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "externalcontact/get_corp_tag_list": corp.get_corp_tag_list,
            "externalcontact/add_corp_tag": corp.add_corp_tag,
            "externalcontact/edit_corp_tag": corp.edit_corp_tag,
            "externalcontact/del_corp_tag": corp.del_corp_tag,
            "externalcontact/mark_tag": corp.mark_tag,
            "externalcontact/add_msg_template": corp.add_msg_template,
            "externalcontact/get_groupmsg_send_result": corp.get_groupmsg_send_result,
        }
        return handlers[api](body)

    # --- controls ----------------------------------------------------------------------------------

    def add_staff(self, userid: str) -> None:
        self.corp.add_staff(userid)

    def add_customer(self, external_userid: str, *, name: str = "", follow_users: Sequence[str] = ()) -> None:
        """A customer who added `follow_users` (staff) as friends on WeChat."""
        self.corp.add_customer(external_userid, name=name or external_userid, follow_users=follow_users)

    def set_callback_url(self, url: str) -> None:
        self.callback = Callback(
            url,
            self.callback.corp_id,
            self.callback.token,
            self.callback.encoding_aes_key,
            self.callback.agent_id,
        )

    async def staff_edit_tags(
        self, userid: str, external_userid: str, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> Delivery | None:
        """Staff `userid` edits the customer's tags (tag ids) on their phone: applied, then the
        `change_external_contact` / `edit_external_contact` callback is sent (None when no callback
        URL is configured). Raises Refusal as mark_tag would answer."""
        self.corp.staff_edit_tags(userid, external_userid, add=add, remove=remove)
        return await self._edited(userid, external_userid)

    async def _edited(self, userid: str, external_userid: str) -> Delivery | None:
        return await self.send_event(
            {
                "Event": "change_external_contact",
                "ChangeType": "edit_external_contact",
                "UserID": userid,
                "ExternalUserID": external_userid,
            }
        )

    async def staff_add_tag(self, group_name: str, tag_name: str) -> tuple[str, Delivery | None]:
        """An admin adds a tag in the console: the tag id and the `change_external_tag` / `create`
        callback."""
        answer = self.corp.add_corp_tag({"group_name": group_name, "tag": [{"name": tag_name}]})
        tag_id = str(answer["tag_group"]["tag"][0]["id"])
        delivery = await self.send_event(
            {"Event": "change_external_tag", "Id": tag_id, "TagType": "tag", "ChangeType": "create"}
        )
        return tag_id, delivery

    async def staff_rename_tag(self, id: str, name: str) -> Delivery | None:
        """An admin renames a tag or group: `change_external_tag` / `update`."""
        self.corp.edit_corp_tag({"id": id, "name": name})
        kind = "tag_group" if id in self.corp.groups else "tag"
        return await self.send_event(
            {"Event": "change_external_tag", "Id": id, "TagType": kind, "ChangeType": "update"}
        )

    async def staff_delete_tag(self, id: str) -> Delivery | None:
        """An admin deletes a tag or group: `change_external_tag` / `delete`."""
        kind = "tag_group" if id in self.corp.groups else "tag"
        self.corp.del_corp_tag({"group_id": [id]} if kind == "tag_group" else {"tag_id": [id]})
        return await self.send_event(
            {"Event": "change_external_tag", "Id": id, "TagType": kind, "ChangeType": "delete"}
        )

    async def send_event(self, fields: dict[str, str]) -> Delivery | None:
        """Any event (a `shuffle`, an event MemberOps does not know), encrypted, signed and POSTed."""
        if not self.callback.url or self._session is None:
            return None
        delivery = await callbacks.deliver(self._session, self.callback, fields, now=int(self.now()))
        self._deliveries.append(delivery)
        return delivery

    async def redeliver(self, delivery: Delivery) -> Delivery:
        """Sends a callback again exactly as before: WeCom's retry of a callback it got no answer
        to within 5 s (the same message, signature and ciphertext)."""
        if self._session is None:
            raise RuntimeError("the local WeCom server is not started")
        again = await callbacks.send(self._session, self.callback.url, delivery)
        self._deliveries.append(again)
        return again

    async def verify_callback_url(self) -> bool:
        """What WeCom does when the callback URL is saved: the GET with `echostr`."""
        if self._session is None:
            raise RuntimeError("the local WeCom server is not started")
        passed, delivery = await callbacks.verify_url(self._session, self.callback, now=int(self.now()))
        self._deliveries.append(delivery)
        return passed

    def expire_tokens(self) -> None:
        """Every access_token issued so far answers 42001."""
        self.corp.expire_tokens()

    def revoke_tokens(self) -> None:
        """Every access_token issued so far answers 40014."""
        self.corp.revoke_tokens()

    def storm(self, errcode: int, count: int, *, api: str | None = None) -> None:
        """The next `count` calls (of `api`, or any) answer `errcode` (45009, 45033, -1...)."""
        self._storm.extend([(errcode, api)] * count)

    def set_quota(self, api: str, per_minute: int) -> None:
        """`api` (e.g. "externalcontact/mark_tag") answers 45009 past `per_minute` calls a minute."""
        self.corp.quotas[api] = per_minute

    def calls(self, api: str | None = None) -> list[Call]:
        return [call for call in self._calls if api is None or call.api == api]

    def deliveries(self) -> list[Delivery]:
        """Callbacks sent (and URL verifications), with what the receiver answered."""
        return list(self._deliveries)

    def customer_tags(self, external_userid: str, userid: str | None = None) -> list[HeldTag]:
        """The tags a customer holds from `userid` (every staff member's when None), by group and name."""
        customer = self.corp.customers.get(external_userid)
        if customer is None:
            raise KeyError(external_userid)
        held = []
        for follow in customer.follows.values():
            if userid is not None and follow.userid != userid:
                continue
            for tag_id in follow.tag_ids:
                found = self.corp.tag(tag_id)
                if found is not None:
                    group, tag = found
                    held.append(HeldTag(group.group_id, group.group_name, tag.id, tag.name))
        return sorted(set(held), key=lambda t: (t.group_name, t.tag_name))

    def tag_id(self, group_name: str, tag_name: str) -> str | None:
        for group in self.corp.groups.values():
            if group.group_name == group_name:
                for tag in group.tags.values():
                    if tag.name == tag_name:
                        return tag.id
        return None

    def messages(self) -> list[Message]:
        return list(self.corp.messages.values())
