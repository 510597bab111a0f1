"""A service's one Temporal client, connected on first use: a service that starts workflows
(journeys: state changes and broadcasts; tagging: history rebuilds) starts and answers everything
else while Temporal is still coming up, and an RPC that needs Temporal when it cannot be reached is
UNAVAILABLE, which a caller may retry."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from runtime import tracing
from runtime.config import Settings
from runtime.errors import Unavailable

_T = TypeVar("_T")
# Temporal did not answer: what the call asked may be done, and repeating the call finishes the job.
_NO_ANSWER = (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED)


class LazyClient:
    def __init__(self, settings: Settings) -> None:
        self._address = settings.temporal_address
        self._namespace = settings.temporal_namespace
        self._client: Client | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Client:
        async with self._lock:
            if self._client is None:
                try:
                    # Traced (when tracing is on): an operator's ActivateJourney or StartBroadcast and the
                    # workflows it starts are one trace (runtime/tracing.py).
                    self._client = await Client.connect(
                        self._address,
                        namespace=self._namespace,
                        interceptors=tracing.temporal_interceptors(),
                    )
                except RuntimeError as error:
                    raise Unavailable(f"Temporal at {self._address} did not answer: {error}") from error
            return self._client


async def answered(call: Awaitable[_T]) -> _T:
    """The call's result; UNAVAILABLE (retry later) when Temporal did not answer it."""
    try:
        return await call
    except RPCError as error:
        if error.status in _NO_ANSWER:
            raise Unavailable(f"Temporal did not answer: {error.message}") from error
        raise
