"""Inputs and results of the WeCom sync workflow and its activities (Temporal dataclasses)."""

from __future__ import annotations

import datetime as dt
from dataclasses import astuple, dataclass, field


@dataclass(frozen=True)
class PushCounts:
    """What rounds did: feed entries read; members whose WeCom tags were set (mark_tag calls);
    members whose tags changed but who have no WeCom identity; changes made from WeCom (reason
    `wecom`), not pushed back; members a reconciliation checked and repaired; groups and tags
    created and renamed in WeCom."""

    entries: int = 0
    marked: int = 0
    skipped: int = 0
    pulled_changes: int = 0
    checked: int = 0
    repaired: int = 0
    created: int = 0
    renamed: int = 0

    def plus(self, other: PushCounts) -> PushCounts:
        return PushCounts(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


@dataclass(frozen=True)
class WeComSyncInput:
    """`temporal workflow start --type WeComSync --input` takes this as JSON; only the tenant is
    required (the journeys service starts it on a connector put)."""

    tenant_id: str
    # Most feed entries (and reconciliation members' entries) one round takes (1-1000).
    batch_size: int = 200
    # How long a round waits for new feed entries before it ends empty (it polls meanwhile).
    idle_seconds: float = 10.0
    # How long the sync sleeps between rounds while the connector is missing or off (a put wakes it).
    off_seconds: float = 300.0
    # Carried across continue-as-new.
    rounds: int = 0
    totals: PushCounts = field(default_factory=PushCounts)


@dataclass(frozen=True)
class RoundRequest:
    tenant_id: str
    batch_size: int
    idle_seconds: float


@dataclass(frozen=True)
class RoundResult:
    # False: no connector, or it is off; nothing was done.
    enabled: bool
    cursor: str = ""
    # A full reconciliation is running (the next round goes on with it at once).
    resyncing: bool = False
    # The batch was full: more entries wait (the next round goes on at once).
    more: bool = False
    counts: PushCounts = field(default_factory=PushCounts)


@dataclass(frozen=True)
class SyncStatus:
    """What the `status` query answers."""

    tenant_id: str
    rounds: int
    totals: PushCounts
    last_round_time: dt.datetime | None = None
    last_round: RoundResult | None = None
