"""Reading WeCom messages' results back into the message log (journeys migration 0012).

A WeCom message the channel sent is a task WeCom holds for the sender: the customer gets it once
the staff member confirms it, or not at all (no longer their contact, or the customer already got a
group message: WeCom's limit). `get_groupmsg_send_result` (获取企业群发成员执行结果) answers per
customer `status` 0 not sent yet, 1 sent, 2 not a friend, 3 already received one; each message's
row gets its result. A message still at 0 is asked again after RECHECK, and given up as `expired`
after GIVE_UP. Rows that WeCom never took (failed, unknown, skipped) are settled as `none` without a
call. Reading is idempotent: a result is written once, over an empty one only.

Run for one tenant at a time by the activity `wecom.read_results` (the WeCom sync calls it each
round), in batches of BATCH, with the tenant's connector; without an enabled connector nothing is
read (rows wait for it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import aiohttp
from temporalio import activity

from runtime import logs
from runtime.db import Database
from workflows.journeys.channels import wecom_result_store
from workflows.journeys.channels.wecom import WeComChannel, parse_provider_id
from workflows.journeys.channels.wecom_result_store import Unread
from workflows.wecom.api import WeComApi, WeComBusy, WeComError, WeComUnavailable

BATCH = 100
RECHECK = dt.timedelta(minutes=5)
GIVE_UP = dt.timedelta(days=3)
# get_groupmsg_send_result's per-customer status -> the row's result (0: not sent yet, no result).
RESULTS = {1: "delivered", 2: "not_friend", 3: "limited"}
NOT_TAKEN = "none"

log = logs.get_logger("memberops.journeys.wecom_results")


async def read_results(db: Database, channel: WeComChannel, tenant_id: str, now: dt.datetime) -> int:
    """Reads one batch of the tenant's unread WeCom results; returns how many rows got a result.
    Stops early (the rest wait for the next call) when WeCom is busy or does not answer."""
    connector = await channel.connector(tenant_id)
    if connector is None:
        return 0
    async with db.transaction(tenant_id, readonly=True) as conn:
        messages = await wecom_result_store.unread(conn, now - RECHECK, BATCH)
    if not messages:
        return 0
    read: list[Unread] = []
    results: list[str] = []
    async with aiohttp.ClientSession() as http:
        api = channel.api(http, connector)
        for message in messages:
            try:
                result = await _result(api, message, now)
            except (WeComBusy, WeComUnavailable) as error:
                log.info("wecom results: stopped for now", tenant=tenant_id, errcode=error.errcode)
                break
            read.append(message)
            results.append(result)
    if read:
        async with db.transaction(tenant_id) as conn:
            await wecom_result_store.record(conn, read, results, now)
    return sum(1 for result in results if result)


async def _result(api: WeComApi, message: Unread, now: dt.datetime) -> str:
    """The message's result, or '' when WeCom has not sent it yet (asked again later)."""
    ids = parse_provider_id(message.provider_id) if message.status == "sent" else None
    if ids is None:
        return NOT_TAKEN
    msgid, sender = ids
    try:
        entries = await api.get_groupmsg_send_result(msgid=msgid, userid=sender)
    except (WeComBusy, WeComUnavailable):
        raise  # no answer for this one: the batch stops here
    except WeComError as error:
        log.info("wecom results: message unreadable", errcode=error.errcode)
        return "unreadable"
    # One customer per message (the channel sends to one).
    statuses: Sequence[int] = [e.get("status", 0) for e in entries if isinstance(e, dict)]
    result = next((RESULTS[s] for s in statuses if s in RESULTS), "")
    if not result and now - message.create_time >= GIVE_UP:
        return "expired"
    return result


class WeComResultActivities:
    def __init__(self, db: Database, channel: WeComChannel) -> None:
        self._db = db
        self._channel = channel

    @activity.defn(name="wecom.read_results")
    async def read_results(self, tenant_id: str) -> int:
        """One batch of the tenant's WeCom message results read back; how many got one."""
        now = activity.info().started_time
        return await read_results(self._db, self._channel, tenant_id, now)
