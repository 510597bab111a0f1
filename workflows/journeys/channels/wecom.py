"""The `wecom` channel: a message to a member as a WeCom customer, through WeCom's customer-message
API (客户联系 / 消息推送 / 创建企业群发, `externalcontact/add_msg_template`), the mode WeCom offers for
marketing to external contacts.

A tenant switches it on with its WeCom connector (journeys.wecom_connectors, enabled): the corp id
and secret it sends with. A member is reachable when tagging holds both their WeCom
`external_userid` and the staff `userid` owning the relationship (the `sender`: WeCom sends from a
staff member to their customers). Otherwise the channel is not usable for the member and the send
falls back as past any unconfigured channel.

One message is one `add_msg_template` call: `chat_type` single, `sender`, `external_userid` [the
member's], `text.content` the body (WeCom's text has no subject). The call takes no idempotency key,
so the message log's rule is what keeps a message from being sent twice: WeCom's answers map to the
three ways a delivery fails as follows.
- `msgid` with the member absent from `fail_list`: sent; the provider id is `{msgid}/{sender}`,
  what `get_groupmsg_send_result` needs to read the customer's result back (wecom_results.py).
- The member in `fail_list` (WeCom: "无效或无法发送的external_userid"): Rejected.
- Quota and busy answers (45009, 45033, -1) still there after a short wait (WeComBusy): NotDelivered,
  a later attempt may send (WeCom did nothing).
- No answer (connection dropped, timeout, HTTP error: WeComUnavailable): OutcomeUnknown, never sent
  again; WeCom may hold the message. When the call certainly never reached WeCom (no connection,
  no token: `maybe_taken` False), NotDelivered.
- Any other errcode (bad sender, content, credentials): Rejected.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp

from runtime.db import Database
from workflows.journeys.channels.base import NotDelivered, OutcomeUnknown, Outgoing, Rejected, Session
from workflows.wecom import connector_store
from workflows.wecom.api import Credentials, WeComApi, WeComBusy, WeComError, WeComUnavailable
from workflows.wecom.connector_store import Connector

NAME = "wecom"
# WeCom's limit on a text message's content ("最多4000个字节").
MAX_CONTENT_BYTES = 4000
# A tenant's connector is read again after this long: a connector switched off stops sends within it.
CONNECTOR_SECONDS = 5.0
# How long a send waits out WeCom's quota answers before leaving the message to a later attempt:
# well inside a send activity's 30-second attempt (a longer wait would end the attempt with the
# row in `sending`, which makes a message refused for quota `unknown`).
MAX_WAIT_SECONDS = 7.0


def provider_id(msgid: str, sender: str) -> str:
    """The message log's provider id of a WeCom message (msgids and userids hold no `/`)."""
    return f"{msgid}/{sender}"


def parse_provider_id(value: str) -> tuple[str, str] | None:
    """(msgid, sender) of a provider id `provider_id` made, or None."""
    msgid, slash, sender = value.partition("/")
    return (msgid, sender) if slash and msgid and sender else None


class WeComChannel:
    """The channel for every tenant, each with its own connector (a TenantChannel)."""

    def __init__(
        self,
        db: Database,
        base_url: str,
        *,
        max_wait_seconds: float = MAX_WAIT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._base_url = base_url
        self._max_wait = max_wait_seconds
        self._clock = clock
        self._connectors: dict[str, tuple[Connector | None, float]] = {}

    async def connector(self, tenant_id: str) -> Connector | None:
        """The tenant's enabled connector (read at most every CONNECTOR_SECONDS), or None."""
        held = self._connectors.get(tenant_id)
        if held is not None and self._clock() - held[1] < CONNECTOR_SECONDS:
            return held[0]
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            found = await connector_store.get(conn)
        enabled = found if found is not None and found.enabled else None
        self._connectors[tenant_id] = (enabled, self._clock())
        return enabled

    def api(self, http: aiohttp.ClientSession, connector: Connector) -> WeComApi:
        """The tenant's WeCom API, waiting out quota answers MAX_WAIT_SECONDS at most."""
        credentials = Credentials(self._base_url, connector.corp_id, connector.secret)
        return WeComApi(http, credentials, max_wait_seconds=self._max_wait)

    async def enabled(self, tenant_id: str) -> bool:
        return await self.connector(tenant_id) is not None

    async def deliver(self, message: Outgoing) -> str:
        async with self.session() as session:
            return await session.deliver(message)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        """One HTTP connection pool for the messages of a batch."""
        async with aiohttp.ClientSession() as http:
            yield _Session(self, http)

    async def send(self, http: aiohttp.ClientSession, message: Outgoing) -> str:
        if not message.to or not message.sender:
            raise Rejected("the member has no WeCom contact and owning staff member")
        if len(message.body.encode()) > MAX_CONTENT_BYTES:
            raise Rejected(f"the text is longer than WeCom's {MAX_CONTENT_BYTES} bytes")
        connector = await self.connector(message.tenant_id)
        if connector is None:
            raise Rejected("the tenant's WeCom connector is not enabled")
        api = self.api(http, connector)
        try:
            msgid, fail_list = await api.add_msg_template(
                sender=message.sender, external_userids=[message.to], content=message.body
            )
        except WeComBusy as error:
            raise NotDelivered(f"WeCom busy (errcode {error.errcode}); not taken") from None
        except WeComUnavailable as error:
            if not error.maybe_taken:
                raise NotDelivered(f"WeCom not reached: {error.errmsg}") from None
            raise OutcomeUnknown(f"no answer from WeCom: {error.errmsg}") from None
        except WeComError as error:
            refused = f"WeCom refused the message: errcode {error.errcode} {error.errmsg}"
            raise Rejected(refused[:300]) from None
        if message.to in fail_list or not msgid:
            raise Rejected("WeCom cannot send to this customer (fail_list)")
        return provider_id(msgid, message.sender)


class _Session:
    def __init__(self, channel: WeComChannel, http: aiohttp.ClientSession) -> None:
        self._channel = channel
        self._http = http

    async def deliver(self, message: Outgoing) -> str:
        return await self._channel.send(self._http, message)
