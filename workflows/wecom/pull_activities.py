"""The pull as an activity of the WeCom sync (`wecom_pull`): the sync's round runs it when signalled
`callbacks` and on every round, so rows a lost signal left are pulled too (workflows/wecom/pull.py
does the work)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import grpc
from memberops.tagging.v1 import tagging_service_pb2_grpc
from temporalio import activity
from temporalio.exceptions import ApplicationError

from runtime.db import Database
from workflows import service_calls
from workflows.wecom.api import Credentials, WeComApi, WeComBusy, WeComError, WeComUnavailable
from workflows.wecom.connector_store import Connector
from workflows.wecom.pull import BATCH, Pull, PullResult

# While WeCom's quota backoff waits (up to a minute at a time), the activity heartbeats this often.
HEARTBEAT_SECONDS = 1.0


async def _heartbeating_sleep(seconds: float) -> None:
    """WeCom's backoff, heartbeating so a minute's quota block is not taken for a dead worker."""
    left = seconds
    while left > 0:
        activity.heartbeat()
        step = min(left, HEARTBEAT_SECONDS)
        await asyncio.sleep(step)
        left -= step


class WeComPullActivities:
    def __init__(
        self,
        db: Database,
        tagging: tagging_service_pb2_grpc.TaggingServiceAsyncStub,
        token_for_tenant: service_calls.TokenForTenant,
        wecom_api_url: str,
    ) -> None:
        self._db = db
        self._tagging = tagging
        self._token_for_tenant = token_for_tenant
        self._base_url = wecom_api_url

    @activity.defn(name="wecom_pull")
    async def pull(self, tenant_id: str) -> PullResult:
        """Pulls the oldest waiting callbacks of the tenant (a batch; `more` when it was full).
        WeCom busy or unreachable, or tagging unavailable: retried by Temporal (the rows wait, and
        what was written is written again as nothing, state being compared). Another WeCom error
        is not retried here: the round fails with it and the next round tries again."""
        async with aiohttp.ClientSession() as session:

            def api(connector: Connector) -> WeComApi:
                credentials = Credentials(self._base_url, connector.corp_id, connector.secret)
                return WeComApi(session, credentials, sleep=_heartbeating_sleep)

            pull = Pull(self._db, self._tagging, self._token_for_tenant, api)
            try:
                return await pull.run(tenant_id, limit=BATCH, progress=activity.heartbeat)
            except (WeComBusy, WeComUnavailable):
                raise
            except WeComError as error:
                raise ApplicationError(str(error), type="WeComError", non_retryable=True) from error
            except grpc.aio.AioRpcError as error:
                raise service_calls.permanent("tagging", error) from error

    def all(self) -> list[Callable[..., Any]]:
        return [self.pull]
