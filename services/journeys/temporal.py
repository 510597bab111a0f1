"""The journeys service's one Temporal client, connected on first use: the service starts (and
answers definitions, lists and reports) while Temporal is still coming up, and an RPC that needs
Temporal when it cannot be reached is UNAVAILABLE, which a caller may retry."""

from __future__ import annotations

import asyncio

from temporalio.client import Client

from runtime.config import Settings
from runtime.errors import Unavailable


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
                    self._client = await Client.connect(self._address, namespace=self._namespace)
                except RuntimeError as error:
                    raise Unavailable(f"Temporal at {self._address} did not answer: {error}") from error
            return self._client
