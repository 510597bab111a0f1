"""The callbacks the local WeCom server sends: the event XML, encrypted and signed as WeCom does
(workflows/wecom/crypto.py), POSTed to the configured callback URL; and the GET with `echostr` WeCom
sends when a callback URL is configured (URL verification)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp

from workflows.wecom import crypto

# "企业微信服务器在五秒内收不到响应会断掉连接, 并且重新发起请求, 总共重试三次".
_TIMEOUT = aiohttp.ClientTimeout(total=5)
_RETRIES = 3


@dataclass(frozen=True)
class Callback:
    """Where WeCom sends callbacks and with which secrets."""

    url: str
    corp_id: str
    token: str
    encoding_aes_key: str
    agent_id: str = ""


@dataclass(frozen=True)
class Delivery:
    """One callback sent: its event fields and what the receiver answered (status 0: no answer
    after WeCom's retries), with the request as sent, so a test can send it again as WeCom's retry."""

    fields: Mapping[str, str]
    status: int
    answer: str
    query: Mapping[str, str] = field(default_factory=dict)
    body: str = ""
    attempts: int = 1


def _cdata(value: str) -> str:
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def event_xml(corp_id: str, fields: Mapping[str, str], create_time: int) -> bytes:
    """An event as WeCom writes it: ToUserName (the corp), FromUserName `sys`, CreateTime, MsgType
    `event`, then the event's own fields (Event, ChangeType, UserID, ExternalUserID, ...)."""
    parts = [
        f"<ToUserName>{_cdata(corp_id)}</ToUserName>",
        f"<FromUserName>{_cdata('sys')}</FromUserName>",
        f"<CreateTime>{create_time}</CreateTime>",
        f"<MsgType>{_cdata('event')}</MsgType>",
        *(f"<{name}>{_cdata(value)}</{name}>" for name, value in fields.items()),
    ]
    return ("<xml>" + "".join(parts) + "</xml>").encode()


def _signed_query(callback: Callback, encrypted: str, timestamp: int) -> dict[str, str]:
    nonce = str(secrets.randbelow(10**10))
    stamp = str(timestamp)
    return {
        "msg_signature": crypto.signature(callback.token, stamp, nonce, encrypted),
        "timestamp": stamp,
        "nonce": nonce,
    }


async def deliver(
    session: aiohttp.ClientSession, callback: Callback, fields: Mapping[str, str], *, now: int
) -> Delivery:
    """POSTs one event: `?msg_signature&timestamp&nonce` and the XML envelope
    `<xml><ToUserName/><Encrypt/><AgentID/></xml>`."""
    encrypted = crypto.encrypt(
        callback.encoding_aes_key, callback.corp_id, event_xml(callback.corp_id, fields, now)
    )
    query = _signed_query(callback, encrypted, now)
    body = (
        f"<xml><ToUserName>{_cdata(callback.corp_id)}</ToUserName><Encrypt>{_cdata(encrypted)}</Encrypt>"
        f"<AgentID>{_cdata(callback.agent_id)}</AgentID></xml>"
    )
    return await send(session, callback.url, Delivery(dict(fields), 0, "", query, body, 0))


async def send(session: aiohttp.ClientSession, url: str, request: Delivery) -> Delivery:
    """POSTs a prepared callback (again, for a retry), trying again while no answer comes, three
    times at most as WeCom does."""
    attempts, answer = 0, "no answer"
    while attempts <= _RETRIES:
        attempts += 1
        try:
            async with session.post(
                url,
                params=request.query,
                data=request.body.encode(),
                headers={"Content-Type": "text/xml"},
                timeout=_TIMEOUT,
            ) as response:
                text = await response.text()
                return Delivery(request.fields, response.status, text, request.query, request.body, attempts)
        except (aiohttp.ClientError, TimeoutError) as error:
            answer = type(error).__name__
    return Delivery(request.fields, 0, answer, request.query, request.body, attempts)


async def verify_url(
    session: aiohttp.ClientSession, callback: Callback, *, now: int
) -> tuple[bool, Delivery]:
    """WeCom's URL verification: GET with an encrypted random `echostr`; the URL passes when it
    answers the plaintext."""
    echo = str(secrets.randbelow(10**19))
    encrypted = crypto.encrypt(callback.encoding_aes_key, callback.corp_id, echo.encode())
    query = {**_signed_query(callback, encrypted, now), "echostr": encrypted}
    async with session.get(callback.url, params=query, timeout=_TIMEOUT) as response:
        answer = await response.text()
        return response.status == 200 and answer == echo, Delivery({}, response.status, answer, query)
