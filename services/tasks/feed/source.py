"""Tagging's feed as the follower reads it (the gRPC side is `services/tasks/peers.py`; entries
are read into typed values by `runtime.tagging_feed`)."""

from __future__ import annotations

from typing import Protocol

from runtime.tagging_feed import FeedEntry, FeedKind

__all__ = ["FACT_KINDS", "FeedEntry", "FeedSource"]

FACT_KINDS = (
    FeedKind.MEMBER_CHANGED,
    FeedKind.ORDER_RECORDED,
    FeedKind.REFUND_RECORDED,
    FeedKind.EVENT_RECORDED,
)


class FeedSource(Protocol):
    async def read_feed(self, tenant_id: str, after_cursor: str, limit: int) -> tuple[list[FeedEntry], str]:
        """The next fact entries (FACT_KINDS: tag changes are none of tasks' business) and the cursor
        to continue from, which may be past the last entry returned."""
        ...
