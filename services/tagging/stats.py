"""Tag statistics: how many members hold each value of a dimension (coverage, distribution), now
or at a past moment of valid time (a dimension's trend).

Counts come from one grouped statement over the holdings (current, or valid at the moment); the
catalog says which values a dimension has, so values nobody holds still appear (with 0) and in the
definition's order.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.db import Connection, Database
from runtime.errors import NotFound, Violations
from services.tagging import catalog, definition_store, stats_store

_DEFINITION_PAGE = 1000


@dataclass(frozen=True)
class ValueCount:
    value: str
    member_count: int
    # Of the members holding any value of the dimension.
    share: float


@dataclass(frozen=True)
class DimensionStats:
    dimension: str
    covered_count: int
    # Of all the tenant's members.
    coverage: float
    values: tuple[ValueCount, ...]


@dataclass(frozen=True)
class TagStats:
    member_count: int
    dimensions: tuple[DimensionStats, ...]


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def dimension_stats(
    spec: catalog.DefinitionInput, member_count: int, covered: int, held: dict[str, int]
) -> DimensionStats:
    """The definition's values first, in its order and zeros included; then values only the data
    has (categories, values of an older version still held) by count, most first, then by name."""
    listed = [value.value for value in spec.values]
    others = sorted(set(held) - set(listed), key=lambda value: (-held[value], value))
    return DimensionStats(
        dimension=spec.dimension,
        covered_count=covered,
        coverage=_ratio(covered, member_count),
        values=tuple(
            ValueCount(value, held.get(value, 0), _ratio(held.get(value, 0), covered))
            for value in [*listed, *others]
        ),
    )


async def _active_definitions(conn: Connection) -> dict[str, catalog.DefinitionInput]:
    """Every active definition, by dimension in dimension order."""
    found: dict[str, catalog.DefinitionInput] = {}
    after = ""
    while True:
        rows = await definition_store.list_definitions(conn, after, _DEFINITION_PAGE, False)
        found.update((row["dimension"], catalog.from_body(row["body"])) for row in rows)
        if len(rows) < _DEFINITION_PAGE:
            return found
        after = rows[-1]["dimension"]


class Stats:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(
        self, tenant_id: str, dimensions: Sequence[str], as_of: dt.datetime | None = None
    ) -> TagStats:
        """Counts for the named dimensions in the order named, or for every active one: now, or
        at `as_of` (valid time, today's belief), by today's definitions."""
        violations = Violations()
        named = catalog.named_dimensions(dimensions, violations, "dimensions")
        violations.raise_if_any()
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            active = await _active_definitions(conn)
            for name, i in named.items():
                if name not in active:
                    raise NotFound(f"dimensions[{i}]: tagDefinitions/{name} not found or retired")
            chosen = [active[name] for name in named] if named else list(active.values())
            counts = await stats_store.held_counts(conn, sorted({spec.dimension for spec in chosen}), as_of)
        return TagStats(
            member_count=counts.member_count,
            dimensions=tuple(
                dimension_stats(
                    spec,
                    counts.member_count,
                    counts.covered.get(spec.dimension, 0),
                    counts.by_value.get(spec.dimension, {}),
                )
                for spec in chosen
            ),
        )
