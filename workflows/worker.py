"""The MemberOps worker: `python -m workflows.worker`. Runs every workflow and activity on one queue."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from typing import Any

import grpc
from memberops.tagging.v1 import tagging_service_pb2_grpc
from temporalio.client import Client
from temporalio.worker import Worker

from services.common import logs
from services.common.config import Settings
from workflows.member_lookup.activities import TaggingActivities
from workflows.member_lookup.workflow import MemberLookupWorkflow

log = logs.get_logger("memberops.worker")

WORKFLOWS: Sequence[type] = (MemberLookupWorkflow,)


def activities(tagging_channel: grpc.aio.Channel, settings: Settings) -> list[Any]:
    """Every activity the worker runs, bound to channels opened once for this event loop."""
    tagging = TaggingActivities(
        tagging_service_pb2_grpc.TaggingServiceStub(tagging_channel),
        settings.token_for_tenant,
    )
    return [tagging.get_member]


def build_worker(client: Client, settings: Settings, tagging_channel: grpc.aio.Channel) -> Worker:
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=list(WORKFLOWS),
        activities=activities(tagging_channel, settings),
    )


async def connect(settings: Settings, attempts: int = 60) -> Client:
    """Connects to Temporal, waiting for it while it starts (as under `make up`)."""
    for attempt in range(1, attempts + 1):
        try:
            return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
        except RuntimeError as error:
            if attempt == attempts:
                raise
            log.info("temporal not reachable yet", attempt=attempt, error=str(error))
            await asyncio.sleep(1)
    raise AssertionError("unreachable")


async def run(settings: Settings) -> None:
    settings.require_tokens()
    client = await connect(settings)
    async with grpc.aio.insecure_channel(settings.tagging_address) as tagging_channel:
        worker = build_worker(client, settings, tagging_channel)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with worker:
            log.info("worker running", task_queue=settings.temporal_task_queue)
            await stop.wait()
            log.info("worker shutting down")


def main() -> None:
    settings = Settings.from_env()
    logs.configure(settings.log_level, service="worker")
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
