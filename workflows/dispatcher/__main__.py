"""`python -m workflows.dispatcher`: starts the dispatcher of every configured tenant (what `make up`
runs once the worker polls), after creating the audiences the shipped journeys enter from and the
coupon templates they issue from (workflows/journeys/shipped_coupons.py).

Idempotent: a running dispatcher is left alone, an existing audience is not touched (a tenant's own
`win-back` audience stays as it is). Needs MEMBEROPS_AUTH_TOKENS, DATABASE_URL and Temporal.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc
from memberops.audience.v1 import audience_service_pb2, audience_service_pb2_grpc
from temporalio.client import Client

from runtime import logs
from runtime.config import Settings
from runtime.db import Database
from workflows.dispatcher import store
from workflows.dispatcher.client import dispatcher_id, ensure_dispatcher
from workflows.dispatcher.payloads import DispatcherInput
from workflows.journeys.shipped import WIN_BACK_AUDIENCE
from workflows.journeys.shipped_coupons import ensure_coupon_templates

SHIPPED_AUDIENCES = (WIN_BACK_AUDIENCE,)
FOLLOWING_WITHIN_SECONDS = 30.0


@dataclass(frozen=True)
class Started:
    tenant_id: str
    workflow_id: str
    # Whether this call started it (False: it was running).
    started: bool
    # The audiences this call created.
    created: tuple[str, ...]


async def ensure_audiences(channel: grpc.aio.Channel, token: str) -> tuple[str, ...]:
    stub = audience_service_pb2_grpc.AudienceServiceStub(channel)
    auth = (("authorization", f"Bearer {token}"),)
    created: list[str] = []
    for audience in SHIPPED_AUDIENCES:
        try:
            await stub.GetAudience(
                audience_service_pb2.GetAudienceRequest(name=f"audiences/{audience.audience_id}"),
                metadata=auth,
                timeout=10,
            )
            continue
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
        await stub.CreateAudience(
            audience_service_pb2.CreateAudienceRequest(
                audience=audience, request_id=f"shipped-{audience.audience_id}"
            ),
            metadata=auth,
            timeout=10,
        )
        created.append(audience.audience_id)
    return tuple(created)


async def wait_following(db: Database, tenant_id: str) -> None:
    """Until the dispatcher's first round has stored its cursors: what happens after is dispatched."""
    deadline = time.monotonic() + FOLLOWING_WITHIN_SECONDS
    while len(await store.cursors(db, tenant_id, dispatcher_id(tenant_id))) < len(store.FEEDS):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{dispatcher_id(tenant_id)} stored no cursors within {FOLLOWING_WITHIN_SECONDS} s"
            )
        await asyncio.sleep(0.1)


async def ensure_all(settings: Settings) -> list[Started]:
    """Every configured tenant's audiences and dispatcher, once each is following its feeds."""
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    db = await Database.connect(settings.require_database(), min_size=1, max_size=2)
    done: list[Started] = []
    try:
        async with (
            grpc.aio.insecure_channel(settings.audience_address) as channel,
            grpc.aio.insecure_channel(settings.tasks_address) as tasks,
        ):
            for token, tenant_id in sorted(settings.require_tokens().items(), key=lambda item: item[1]):
                created = await ensure_audiences(channel, token)
                await ensure_coupon_templates(tasks, token)
                started = await ensure_dispatcher(
                    client, settings.temporal_task_queue, DispatcherInput(tenant_id=tenant_id)
                )
                await wait_following(db, tenant_id)
                done.append(Started(tenant_id, dispatcher_id(tenant_id), started, created))
    finally:
        await db.close()
    return done


def main() -> None:
    settings = Settings.from_env()
    logs.configure(settings.log_level, service="dispatcher")
    for started in asyncio.run(ensure_all(settings)):
        state = "started" if started.started else "already running"
        audiences = f", created audience {', '.join(started.created)}" if started.created else ""
        print(f"{started.workflow_id}: {state}{audiences}")


if __name__ == "__main__":
    main()
