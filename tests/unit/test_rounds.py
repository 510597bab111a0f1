"""The loop of the workers that go through every tenant in rounds: a failed round is not the end,
a full round means go again at once, an idle pass sleeps."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from runtime import rounds


class _Log:
    def __init__(self) -> None:
        self.failures: list[tuple[str, Any]] = []

    def exception(self, event: str, **fields: Any) -> None:
        self.failures.append((event, fields["tenant"]))


async def test_rounds_go_on_after_a_failure_and_sleep_only_when_no_tenant_has_more() -> None:
    # Per tenant, what each pass's round does: True (more waiting), False (done) or fail.
    script: dict[str, list[bool | None]] = {"a": [None, True, False], "b": [False, False, False]}
    seen: list[str] = []
    sleeps: list[float] = []

    async def one_round(tenant_id: str) -> bool:
        seen.append(tenant_id)
        outcome = script[tenant_id].pop(0)
        if outcome is None:
            raise RuntimeError("peer down")
        return outcome

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise asyncio.CancelledError

    log = _Log()
    with pytest.raises(asyncio.CancelledError):
        await rounds.every_tenant(frozenset({"b", "a"}), one_round, 0.5, log, "round failed", sleep)
    # Pass 1: a fails, b is done -> sleep. Pass 2: a has more -> no sleep. Pass 3: done -> sleep.
    assert seen == ["a", "b", "a", "b", "a", "b"]
    assert sleeps == [0.5, 0.5]
    assert log.failures == [("round failed", "a")]
