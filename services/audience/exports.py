"""Limits on `ExportAudience` streams, so that slow or abandoned readers cost only themselves.

An export reads its ids through a cursor that gives its connection back whenever its client keeps
it waiting (`export_reader`); what an open stream still holds is its buffered page and its place
among the tenant's open exports, both bounded here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from runtime.errors import ResourceExhausted


@dataclass(frozen=True)
class ExportLimits:
    # Open exports of one tenant; one more is RESOURCE_EXHAUSTED until one of them ends.
    per_tenant: int = 16
    # Open export cursors of the process: the connections exports may hold (of the pool's 10 by
    # default), so a burst of exports cannot take the pool from every other call.
    reads_in_flight: int = 2
    # An export whose client has not taken a chunk for this long ends with DEADLINE_EXCEEDED.
    idle_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.per_tenant < 1 or self.reads_in_flight < 1 or self.idle_seconds <= 0:
            raise ValueError(f"export limits must be positive: {self}")


class ExportSlots:
    """Counts each tenant's open exports. A slot is given back when its stream ends, however it
    ends; giving it back twice is harmless, so every way out may do it."""

    def __init__(self, per_tenant: int) -> None:
        self._per_tenant = per_tenant
        self._open: dict[str, int] = {}

    def open(self, tenant_id: str) -> int:
        return self._open.get(tenant_id, 0)

    def take(self, tenant_id: str) -> Callable[[], None]:
        """A slot of the tenant's, or ResourceExhausted; returns what gives the slot back."""
        held = self.open(tenant_id)
        if held >= self._per_tenant:
            raise ResourceExhausted(
                f"{held} exports of this tenant are open, the most at once; "
                "read them to the end or cancel them, then retry"
            )
        self._open[tenant_id] = held + 1
        given_back = False

        def give_back() -> None:
            nonlocal given_back
            if not given_back:
                given_back = True
                left = self._open[tenant_id] - 1
                if left:
                    self._open[tenant_id] = left
                else:
                    del self._open[tenant_id]

        return give_back


DEFAULT_EXPORT_LIMITS = ExportLimits()
