"""Member and fact writers for tests of the scheduled recompute: with no real-time refresh, the
recompute alone writes tags."""

from __future__ import annotations

from typing import Any, cast

from runtime.db import Database
from services.tagging.backfill_refresh import BackfillRefresh
from services.tagging.evaluation import Tagger
from services.tagging.facts import Facts
from services.tagging.members import Members
from services.tagging.realtime import RealTimeTags


class _NoRealTime:
    async def refreshed(self, *args: Any, **kwargs: Any) -> None:
        return None


def writers(db: Database, tagger: Tagger) -> tuple[Members, Facts]:
    """Members and facts of any tenant, refreshing no tags when they are written."""
    no_realtime = cast(RealTimeTags, _NoRealTime())
    return Members(db, no_realtime, BackfillRefresh(db, tagger)), Facts(db, no_realtime)
