"""Tagging's feed as the follower reads it (the gRPC side is `services/tasks/peers.py`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class FeedEntry:
    """One entry of tagging's feed (kinds as memberops.tagging.v1.FeedEntryKind)."""

    cursor: str
    kind: int
    member_id: str
    subject_id: str
    payload: dict[str, Any]
    create_time: dt.datetime


MEMBER_CHANGED, ORDER_RECORDED, REFUND_RECORDED, EVENT_RECORDED = 1, 2, 3, 4


FACT_KINDS = (MEMBER_CHANGED, ORDER_RECORDED, REFUND_RECORDED, EVENT_RECORDED)


class FeedSource(Protocol):
    async def read_feed(self, tenant_id: str, after_cursor: str, limit: int) -> tuple[list[FeedEntry], str]:
        """The next fact entries (FACT_KINDS: tag changes are none of tasks' business) and the cursor
        to continue from, which may be past the last entry returned."""
        ...
