"""The client of WeCom's server API (客户联系: customer tags, customer details, customer messages).

The rules WeCom documents and this client keeps:
- `access_token` from `gettoken` goes in the query of every call; it is cached for its `expires_in`
  (refreshed a little early) in a process-wide `TokenCache`. WeCom answers the same token while it is
  valid, so callers fetching at once all get one token. An answer 40014 / 42001 / 40001 (the token
  became invalid or expired early) drops the cached token, fetches a new one and retries the call
  once.
- 45009 (the API's per-minute quota: "1分钟后自动解除"), 45033 (too many concurrent calls) and -1
  (system busy) are waited out: backoff from 1 s doubling to at most 60 s, so a minute's block is
  waited out with a handful of calls instead of hammered, until `max_wait_seconds` is spent; then
  `WeComBusy`. A refused call did nothing, so retrying it is safe.
- A non-200 HTTP answer or a failed connection is `WeComUnavailable` (the outcome of a write may be
  unknown: the caller decides); any other errcode is `WeComError` with the code.
- The secret and the token never reach a log line or an exception's text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from runtime import logs

TOKEN_ERRORS = frozenset({40001, 40014, 42001})
BUSY_ERRORS = frozenset({45009, 45033, -1})
UNAVAILABLE = -2
FIRST_DELAY = 1.0
MAX_DELAY = 60.0
# A token is refreshed this share of its lifetime early (at most 5 minutes), so no call carries a
# token that expires on its way.
_EARLY_SHARE = 0.1
_EARLY_MAX = 300.0
_TIMEOUT = aiohttp.ClientTimeout(total=30)
# get_groupmsg_send_result's largest page.
_SEND_RESULT_PAGE = 1000

_log = logs.get_logger("wecom.api")


class WeComError(Exception):
    """An errcode WeCom answered that retrying will not fix."""

    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(f"WeCom answered errcode {errcode}: {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg


class WeComBusy(WeComError):
    """45009 / 45033 / -1 still answered after the client's wait budget."""


class WeComUnavailable(WeComError):
    """No answer from WeCom: connection failed or HTTP error (errcode -2). `maybe_taken` is False
    when the call certainly never reached WeCom (no connection, or its token could not be had), so
    even a write that WeCom cannot deduplicate (add_msg_template) may be sent again."""

    def __init__(self, errmsg: str, *, maybe_taken: bool = True) -> None:
        super().__init__(UNAVAILABLE, errmsg)
        self.maybe_taken = maybe_taken


@dataclass(frozen=True)
class Credentials:
    base_url: str
    corp_id: str
    secret: str = field(repr=False)


class TokenCache:
    """access_tokens by (base_url, corp_id, secret) with their expiry (monotonic clock)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}

    def get(self, credentials: Credentials) -> str | None:
        held = self._tokens.get(_key(credentials))
        if held is None or held[1] <= self._clock():
            return None
        return held[0]

    def put(self, credentials: Credentials, token: str, expires_in: float) -> None:
        early = min(expires_in * _EARLY_SHARE, _EARLY_MAX)
        self._tokens[_key(credentials)] = (token, self._clock() + expires_in - early)

    def drop(self, credentials: Credentials, token: str) -> None:
        """Forgets `token` (not a newer one another call fetched meanwhile)."""
        key = _key(credentials)
        held = self._tokens.get(key)
        if held is not None and held[0] == token:
            del self._tokens[key]


def _key(credentials: Credentials) -> tuple[str, str, str]:
    return (credentials.base_url.rstrip("/"), credentials.corp_id, credentials.secret)


_SHARED = TokenCache()


class _Busy(Exception):
    def __init__(self, errcode: int, errmsg: str) -> None:
        self.errcode = errcode
        self.errmsg = errmsg


class _TokenRefused(Exception):
    def __init__(self, errcode: int, errmsg: str) -> None:
        self.errcode = errcode
        self.errmsg = errmsg


class WeComApi:
    """One corp's WeCom API over a caller's aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        credentials: Credentials,
        *,
        tokens: TokenCache | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_wait_seconds: float = 120.0,
    ) -> None:
        self._session = session
        self._credentials = credentials
        self._tokens = _SHARED if tokens is None else tokens
        self._sleep = sleep
        self._max_wait = max_wait_seconds

    # --- transport ---------------------------------------------------------------------------------

    async def _fetch(self, api: str, query: dict[str, str], body: dict[str, Any] | None) -> dict[str, Any]:
        """One HTTP exchange; the URL (which carries the secret or the token) is never put in an error."""
        url = f"{self._credentials.base_url.rstrip('/')}/cgi-bin/{api}"
        try:
            if body is None:
                request = self._session.get(url, params=query, timeout=_TIMEOUT)
            else:
                request = self._session.post(url, params=query, json=body, timeout=_TIMEOUT)
            async with request as response:
                if response.status != 200:
                    raise WeComUnavailable(f"{api} answered HTTP {response.status}")
                answer = await response.json(content_type=None)
        except aiohttp.ClientConnectorError as error:
            raise WeComUnavailable(f"{api}: {type(error).__name__}", maybe_taken=False) from None
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            raise WeComUnavailable(f"{api}: {type(error).__name__}") from None
        if not isinstance(answer, dict):
            raise WeComUnavailable(f"{api} answered no JSON object")
        return answer

    @staticmethod
    def _errcode(answer: dict[str, Any]) -> tuple[int, str]:
        errcode = answer.get("errcode", 0)
        return (errcode if isinstance(errcode, int) else UNAVAILABLE), str(answer.get("errmsg", ""))

    async def _token(self) -> str:
        token = self._tokens.get(self._credentials)
        if token is not None:
            return token
        answer = await self._fetch(
            "gettoken", {"corpid": self._credentials.corp_id, "corpsecret": self._credentials.secret}, None
        )
        errcode, errmsg = self._errcode(answer)
        if errcode in BUSY_ERRORS:
            raise _Busy(errcode, errmsg)
        if errcode != 0:
            raise WeComError(errcode, errmsg)
        token, expires_in = answer.get("access_token"), answer.get("expires_in")
        if not isinstance(token, str) or not token or not isinstance(expires_in, int):
            raise WeComUnavailable("gettoken answered no access_token")
        self._tokens.put(self._credentials, token, expires_in)
        return token

    async def _once(self, api: str, query: dict[str, str], body: dict[str, Any] | None) -> dict[str, Any]:
        """One attempt with a token; a token refused is dropped and raises _TokenRefused."""
        try:
            token = await self._token()
        except WeComUnavailable as error:  # the call itself never went out
            raise WeComUnavailable(error.errmsg, maybe_taken=False) from None
        answer = await self._fetch(api, {**query, "access_token": token}, body)
        errcode, errmsg = self._errcode(answer)
        if errcode in TOKEN_ERRORS:
            self._tokens.drop(self._credentials, token)
            raise _TokenRefused(errcode, errmsg)
        if errcode in BUSY_ERRORS:
            raise _Busy(errcode, errmsg)
        if errcode != 0:
            raise WeComError(errcode, errmsg)
        return answer

    async def _call(
        self, api: str, *, query: dict[str, str] | None = None, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        waited, delay, refreshed = 0.0, FIRST_DELAY, False
        while True:
            try:
                return await self._once(api, query or {}, body)
            except _TokenRefused as refused:
                if refreshed:
                    raise WeComError(refused.errcode, refused.errmsg) from None
                refreshed = True
                _log.info("wecom token refused, refreshing", api=api, errcode=refused.errcode)
            except _Busy as busy:
                if waited + delay > self._max_wait:
                    _log.warning(
                        "wecom busy past the wait budget", api=api, errcode=busy.errcode, waited=waited
                    )
                    raise WeComBusy(busy.errcode, busy.errmsg) from None
                _log.info("wecom busy, backing off", api=api, errcode=busy.errcode, delay=delay)
                await self._sleep(delay)
                waited += delay
                delay = min(delay * 2, MAX_DELAY)

    # --- 客户标签管理 -------------------------------------------------------------------------------

    async def get_corp_tag_list(
        self, *, tag_ids: Sequence[str] = (), group_ids: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        """The tag library's groups ("tag_group"), all of them when no ids are given."""
        body: dict[str, Any] = {}
        if tag_ids:
            body["tag_id"] = list(tag_ids)
        if group_ids:
            body["group_id"] = list(group_ids)
        answer = await self._call("externalcontact/get_corp_tag_list", body=body)
        return list(answer.get("tag_group", []))

    async def add_corp_tag(
        self, *, group_name: str, tags: Sequence[str], group_id: str = ""
    ) -> dict[str, Any]:
        """Creates tags in group `group_id`, or in the group named `group_name` (created if new);
        answers the "tag_group" with the new tags' ids."""
        body: dict[str, Any] = {"tag": [{"name": name} for name in tags]}
        if group_id:
            body["group_id"] = group_id
        else:
            body["group_name"] = group_name
        answer = await self._call("externalcontact/add_corp_tag", body=body)
        group: dict[str, Any] = answer.get("tag_group", {})
        return group

    async def edit_corp_tag(self, *, id: str, name: str) -> None:
        """Renames a tag or a group (`id` is either)."""
        await self._call("externalcontact/edit_corp_tag", body={"id": id, "name": name})

    async def del_corp_tag(self, *, tag_ids: Sequence[str] = (), group_ids: Sequence[str] = ()) -> None:
        await self._call(
            "externalcontact/del_corp_tag", body={"tag_id": list(tag_ids), "group_id": list(group_ids)}
        )

    async def mark_tag(
        self,
        *,
        userid: str,
        external_userid: str,
        add_tag: Sequence[str] = (),
        remove_tag: Sequence[str] = (),
    ) -> None:
        """Sets and clears tags on the customer's relationship with staff `userid` in one call."""
        await self._call(
            "externalcontact/mark_tag",
            body={
                "userid": userid,
                "external_userid": external_userid,
                "add_tag": list(add_tag),
                "remove_tag": list(remove_tag),
            },
        )

    # --- 客户管理 -----------------------------------------------------------------------------------

    async def get_external_contact(self, external_userid: str) -> dict[str, Any]:
        """{"external_contact": {...}, "follow_user": [...]}, every page of follow_user joined."""
        query = {"external_userid": external_userid}
        answer = await self._call("externalcontact/get", query=query)
        follow_user = list(answer.get("follow_user", []))
        cursor = answer.get("next_cursor", "")
        while cursor:
            page = await self._call("externalcontact/get", query={**query, "cursor": str(cursor)})
            follow_user.extend(page.get("follow_user", []))
            cursor = page.get("next_cursor", "")
        return {"external_contact": answer.get("external_contact", {}), "follow_user": follow_user}

    # --- 消息推送 -----------------------------------------------------------------------------------

    async def add_msg_template(
        self, *, sender: str, external_userids: Sequence[str], content: str
    ) -> tuple[str, list[str]]:
        """A text message from staff `sender` to their customers: (msgid, fail_list)."""
        answer = await self._call(
            "externalcontact/add_msg_template",
            body={
                "chat_type": "single",
                "sender": sender,
                "external_userid": list(external_userids),
                "text": {"content": content},
            },
        )
        return str(answer.get("msgid", "")), [str(item) for item in answer.get("fail_list", [])]

    async def get_groupmsg_send_result(self, *, msgid: str, userid: str) -> list[dict[str, Any]]:
        """Per customer: external_userid, userid, status (0 not sent yet, 1 sent, 2 not a friend,
        3 the customer already got a group message), send_time; every page."""
        body: dict[str, Any] = {"msgid": msgid, "userid": userid, "limit": _SEND_RESULT_PAGE}
        entries: list[dict[str, Any]] = []
        while True:
            answer = await self._call("externalcontact/get_groupmsg_send_result", body=body)
            entries.extend(answer.get("send_list", answer.get("detail_list", [])))
            cursor = answer.get("next_cursor", "")
            if not cursor:
                return entries
            body = {**body, "cursor": str(cursor)}
