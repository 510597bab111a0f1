"""What the WeCom callback tests share: the test tenant's connector, callbacks made as WeCom makes
them (signed and encrypted with workflows/wecom/crypto.py, WeCom's own scheme), and the journeys
service with its callback endpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from memberops.tagging.v1 import tagging_service_pb2, tags_pb2
from temporalio.testing import WorkflowEnvironment

from runtime import app
from runtime.config import Settings
from runtime.db import Database
from services.journeys import server as journeys_server
from tests.conftest import TENANT_WECOM_PULL, WECOM_PULL
from tests.ports import free_port
from tests.waiting import eventually
from workflows.wecom import connector_store, crypto, sync_store

CORP_ID = "wwcallbacks0001"
TOKEN = "CallbackToken01"
# 43 characters from [A-Za-z0-9], as WeCom's admin console generates them.
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
TENANT = TENANT_WECOM_PULL
SECRET = "secret-callbacks"
# The sync the endpoint signals runs on a task queue no worker polls: the tests read the signals
# its run received from its history, and run the pull themselves.
TASK_QUEUE = "wecom-callbacks-tests"


async def put_connector(
    db: Database,
    *,
    push_dimensions: tuple[str, ...] = (),
    pull_dimensions: tuple[str, ...] = (),
    enabled: bool = True,
    corp_id: str = CORP_ID,
    secret: str = SECRET,
) -> None:
    async with db.transaction(TENANT) as conn:
        found = await connector_store.get(conn, for_update=True)
        await connector_store.put(
            conn,
            TENANT,
            corp_id=corp_id,
            secret=secret,
            callback_token=TOKEN,
            encoding_aes_key=AES_KEY,
            push_dimensions=push_dimensions,
            pull_dimensions=pull_dimensions,
            enabled=enabled,
            version=1 if found is None else found.version + 1,
            now=dt.datetime.now(dt.UTC),
        )


async def counters(db: Database) -> tuple[int, int, int]:
    """(callbacks received, refused, tags pulled) of the test tenant's sync."""
    async with db.transaction(TENANT, readonly=True) as conn:
        state = await sync_store.get(conn)
    if state is None:
        return 0, 0, 0
    return state.callbacks_received, state.callbacks_refused, state.tags_pulled


async def manual_dimension(
    stub: Any,
    name: str,
    values: dict[str, str],
    *,
    display_name: str = "",
    cardinality: tags_pb2.Cardinality.ValueType = tags_pb2.CARDINALITY_MULTI,
) -> None:
    """A MANUAL dimension of the test tenant (staff's WeCom tags become its values):
    `values` maps each value to its display name ('' for none)."""
    definition = tags_pb2.TagDefinition(
        dimension=name,
        display_name=display_name,
        category=tags_pb2.TAG_CATEGORY_MARKETING,
        kind=tags_pb2.TAG_KIND_MANUAL,
        refresh_policy=tags_pb2.REFRESH_POLICY_SCHEDULED,
        cardinality=cardinality,
        values=[tags_pb2.TagValue(value=v, display_name=d) for v, d in values.items()],
    )
    await stub.CreateTagDefinition(
        tagging_service_pb2.CreateTagDefinitionRequest(tag_definition=definition), metadata=WECOM_PULL
    )


async def clear_resync(db: Database) -> bool:
    """Takes back a full reconciliation the pull asked for (so the sync of a later test does not
    run one); whether one was asked for."""
    async with db.transaction(TENANT) as conn:
        status = await conn.execute(
            "UPDATE journeys.wecom_sync SET resync_wanted = false WHERE resync_wanted"
        )
    return status == "UPDATE 1"


def event_xml(
    *, event: str, change_type: str, userid: str = "", external_userid: str = "", extra: str = ""
) -> bytes:
    """An event message as WeCom's "客户联系" callbacks carry it (self-built app layout)."""
    return (
        f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName>"
        "<FromUserName><![CDATA[sys]]></FromUserName>"
        f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
        f"<Event><![CDATA[{event}]]></Event><ChangeType><![CDATA[{change_type}]]></ChangeType>"
        f"<UserID><![CDATA[{userid}]]></UserID><ExternalUserID><![CDATA[{external_userid}]]></ExternalUserID>"
        f"{extra}</xml>"
    ).encode()


def staff_edit(external_userid: str, userid: str = "staff-1") -> bytes:
    """A staff member edited a customer (remark or tags): `edit_external_contact`."""
    return event_xml(
        event="change_external_contact",
        change_type="edit_external_contact",
        userid=userid,
        external_userid=external_userid,
    )


@dataclass(frozen=True)
class Signed:
    query: dict[str, str]
    body: bytes


def signed(message: bytes, *, receiver: str = CORP_ID, token: str = TOKEN) -> Signed:
    """A POST's query and envelope for `message`, encrypted for `receiver` and signed with `token`."""
    encrypted = crypto.encrypt(AES_KEY, receiver, message)
    timestamp, nonce = str(int(time.time())), uuid.uuid4().hex[:10]
    query = {
        "msg_signature": crypto.signature(token, timestamp, nonce, encrypted),
        "timestamp": timestamp,
        "nonce": nonce,
    }
    body = (
        f"<xml><ToUserName><![CDATA[{receiver}]]></ToUserName>"
        f"<Encrypt><![CDATA[{encrypted}]]></Encrypt><AgentID><![CDATA[]]></AgentID></xml>"
    )
    return Signed(query, body.encode())


@contextlib.asynccontextmanager
async def serving_callbacks(
    tasks_settings: Settings, dev_server_env: WorkflowEnvironment, db: Database
) -> AsyncIterator[str]:
    """A journeys service taking WeCom's callbacks on an HTTP port (the test tenant's connector
    put); the test tenant's callback URL."""
    address = f"127.0.0.1:{free_port()}"
    settings = dataclasses.replace(
        tasks_settings,
        wecom_callback_address=address,
        temporal_address=dev_server_env.client.service_client.config.target_host,
        temporal_task_queue=TASK_QUEUE,
    )
    running = await app.start(journeys_server.DEFINITION, settings, "127.0.0.1:0")
    try:
        await put_connector(db)
        url = f"http://{address}/wecom/callback/{TENANT}"
        async with aiohttp.ClientSession() as session:

            async def listening() -> bool:
                try:
                    async with session.get(url) as response:
                        return response.status == 403
                except aiohttp.ClientConnectionError:
                    return False

            await eventually(listening, "the callback endpoint listened")
        yield url
    finally:
        await running.stop()
