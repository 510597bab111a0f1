"""WeCom's callbacks over HTTP (issue 24): the URL a tenant gives WeCom's admin console as its
customer-contact callback URL, `/wecom/callback/{tenant}` on `Settings.wecom_callback_address`.

It follows WeCom's callback protocol ("回调配置" and "加解密方案说明"): `GET ?msg_signature&timestamp&
nonce&echostr` verifies the URL (answer: the decrypted echostr, plain text); `POST` with the same query
and the envelope `<xml><ToUserName/><Encrypt/><AgentID/></xml>` carries one encrypted event. Both are
checked against the tenant's connector: `msg_signature` over its Token, the AES key its
EncodingAESKey, the receiver id inside the plaintext its corp id (workflows/wecom/crypto.py). A
callback that fails any check is refused with 403 and nothing stored (counted as refused); a tenant
without a connector is 404.

An accepted event is stored once (WeCom repeats a callback it had no answer to within 5 seconds:
the row's key is the decrypted message's hash), answered `success` at once, and only then the
tenant's sync is signalled (`callbacks`, signal-with-start): the pull talks to WeCom and tagging,
which must not hold WeCom's request. A signal that fails loses nothing: every sync round pulls the
stored rows. With the connector switched off callbacks are verified and dropped, as WeCom expects
an answer either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from runtime.config import Settings
from runtime.db import Database
from runtime.logs import get_logger
from runtime.temporal_client import LazyClient
from workflows.wecom import callback_store, callback_xml, client, connector_store, crypto, sync_store
from workflows.wecom.connector_store import Connector

log = get_logger("memberops.journeys.wecom")

PATH = "/wecom/callback/{tenant}"
# WeCom's envelope is the ciphertext of a few hundred bytes, base64 and XML around it.
MAX_BODY_BYTES = callback_xml.MAX_BYTES
SUCCESS = "success"

# Signals the tenant's sync that callbacks are waiting (signal-with-start).
Signal = Callable[[str], Awaitable[None]]


class _Refused(Exception):
    """Answer 403: not WeCom's callback for this tenant."""


class CallbackEndpoint:
    def __init__(self, db: Database, tenants: frozenset[str], signal: Signal) -> None:
        self._db = db
        self._tenants = tenants
        self._signal = signal
        self._signals: set[asyncio.Task[None]] = set()

    def application(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get(PATH, self.verify_url)
        app.router.add_post(PATH, self.receive)
        app.on_cleanup.append(self._cancel_signals)
        return app

    async def serve(self, address: str) -> None:
        """Serves until cancelled (a background loop of the journeys service)."""
        host, _, port = address.rpartition(":")
        runner = web.AppRunner(self.application(), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host or "0.0.0.0", int(port)).start()
            log.info("wecom callbacks listening", address=address)
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    async def verify_url(self, request: web.Request) -> web.Response:
        tenant_id, connector = await self._connector(request)
        query = request.query
        # The echostr is base64, URL-encoded by WeCom; a `+` sent unencoded reads as a space.
        echostr = query.get("echostr", "").replace(" ", "+")
        try:
            plain = self._open(connector, query, echostr)
        except _Refused as refused:
            return await self._refuse(tenant_id, str(refused))
        return web.Response(text=plain.decode("utf-8", errors="replace"), content_type="text/plain")

    async def receive(self, request: web.Request) -> web.Response:
        tenant_id, connector = await self._connector(request)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return await self._refuse(tenant_id, "body too large", status=413)
        try:
            envelope = callback_xml.parse(body)
            encrypted = envelope.get("Encrypt", "")
            receiver = envelope.get("ToUserName", "")
            if receiver and receiver != connector.corp_id:
                raise _Refused("the envelope names another corp")
            message = self._open(connector, request.query, encrypted)
            fields = callback_xml.parse(message)
        except callback_xml.MalformedXml as malformed:
            return await self._refuse(tenant_id, f"malformed: {malformed}", status=400)
        except _Refused as refused:
            return await self._refuse(tenant_id, str(refused))
        if not connector.enabled:
            return web.Response(text=SUCCESS)
        async with self._db.transaction(tenant_id) as conn:
            stored = await callback_store.insert(conn, tenant_id, callback_store.digest(message), fields)
            if stored:
                await sync_store.count(conn, callbacks_received=1)
        log.info(
            "wecom callback",
            tenant=tenant_id,
            wecom_event=fields.get("Event", ""),
            change_type=fields.get("ChangeType", ""),
            repeated=not stored,
        )
        if stored:
            task = asyncio.create_task(self._signal_sync(tenant_id))
            self._signals.add(task)
            task.add_done_callback(self._signals.discard)
        return web.Response(text=SUCCESS)

    async def _connector(self, request: web.Request) -> tuple[str, Connector]:
        tenant_id = request.match_info["tenant"]
        if tenant_id not in self._tenants:
            raise web.HTTPNotFound(text="no such tenant")
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            connector = await connector_store.get(conn)
        if connector is None:
            raise web.HTTPNotFound(text="the tenant has no WeCom connector")
        return tenant_id, connector

    @staticmethod
    def _open(connector: Connector, query: Mapping[str, str], encrypted: str) -> bytes:
        """The plaintext of `encrypted` once its signature and receiver check out."""
        signature = query.get("msg_signature", "")
        timestamp, nonce = query.get("timestamp", ""), query.get("nonce", "")
        if not (signature and timestamp and nonce and encrypted):
            raise _Refused("msg_signature, timestamp, nonce and the ciphertext are required")
        try:
            crypto.verify(connector.callback_token, timestamp, nonce, encrypted, signature)
            return crypto.decrypt(connector.encoding_aes_key, connector.corp_id, encrypted)
        except crypto.CallbackRefused as error:
            raise _Refused(str(error)) from error

    async def _refuse(self, tenant_id: str, why: str, *, status: int = 403) -> web.Response:
        async with self._db.transaction(tenant_id) as conn:
            await sync_store.count(conn, callbacks_refused=1)
        log.warning("wecom callback refused", tenant=tenant_id, why=why, status=status)
        return web.Response(status=status, text="refused")

    async def _signal_sync(self, tenant_id: str) -> None:
        try:
            await self._signal(tenant_id)
        except Exception:
            # The rows wait for the sync's next round; the signal only makes it come sooner.
            log.warning("could not signal the wecom sync", tenant=tenant_id, exc_info=True)

    async def _cancel_signals(self, _app: web.Application) -> None:
        for task in list(self._signals):
            task.cancel()
        await asyncio.gather(*self._signals, return_exceptions=True)


def signal_sync(temporal: LazyClient, task_queue: str) -> Signal:
    """Signals `callbacks` to the tenant's sync, starting it when none runs."""

    async def signal(tenant_id: str) -> None:
        await client.signal(await temporal.get(), task_queue, tenant_id, client.CALLBACKS)

    return signal


def loops(
    db: Database, tenants: frozenset[str], settings: Settings, temporal: LazyClient
) -> list[Callable[[], Awaitable[None]]]:
    """The endpoint as a background loop of the journeys service, when an address is configured."""
    address = settings.wecom_callback_address
    if not address:
        return []
    endpoint = CallbackEndpoint(db, tenants, signal_sync(temporal, settings.temporal_task_queue))

    async def serve() -> None:
        await endpoint.serve(address)

    return [serve]
