"""The loop of a background worker that works through every tenant in rounds.

The audience maintainer and the level publisher (and the tasks feed follower) share it, so all of
them go on after a failed round, hurry while work is waiting and rest when none is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


async def every_tenant(
    tenants: frozenset[str],
    one_round: Callable[[str], Awaitable[bool]],
    poll_seconds: float,
    log: Any,
    failure: str,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Runs `one_round` for each tenant in turn until cancelled: at once again while any round
    says more is waiting (it returned True), else after `poll_seconds`. A failed round is logged
    as `failure` and tried again next time, never the end of the loop. `sleep` is for tests: the
    event loop's `asyncio.sleep` is everyone's, not one loop's to replace."""
    while True:
        busy = False
        for tenant_id in sorted(tenants):
            try:
                more = await one_round(tenant_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(failure, tenant=tenant_id)
                continue
            busy = busy or more
        if not busy:
            await sleep(poll_seconds)
