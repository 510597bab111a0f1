"""SQL of tagging.rfm_figures (migration 0029), each member's own RFM figures as the model's
previous recompute found them, and of tagging.rfm_rankings (migration 0031), the thresholds it
ranked them against. Runs on a connection inside a tenant transaction."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from runtime.db import Connection
from services.tagging.models import KeptFigures


async def store(
    conn: Connection,
    tenant_id: str,
    dimension: str,
    kept: KeptFigures,
    now: dt.datetime,
    member_ids: list[str] | None = None,
) -> None:
    """Makes the kept figures of these members (None: every member) those of their facts at `now`.
    Only differences are written, so a recompute of everyone rewrites only the figures that moved."""
    n = len(kept.params)
    tenant, dim = f"${n + 1}::text", f"${n + 2}::text"
    members = "$2::text[]"
    sql = f"""
WITH fresh AS ({kept.sql}),
stale AS (
    SELECT k.member_id FROM tagging.rfm_figures k
    WHERE k.dimension = {dim} AND ({members} IS NULL OR k.member_id = ANY({members}))
      AND NOT EXISTS (SELECT 1 FROM fresh f WHERE f.member_id = k.member_id)
),
removed AS (
    DELETE FROM tagging.rfm_figures k
    WHERE k.dimension = {dim} AND k.member_id = ANY(ARRAY(SELECT s.member_id FROM stale s))
    RETURNING 1
),
written AS (
    INSERT INTO tagging.rfm_figures AS k (tenant_id, dimension, member_id, last_paid, frequency, monetary)
    SELECT {tenant}, {dim}, f.member_id, f.last_paid, f.frequency, f.monetary FROM fresh f
    ON CONFLICT (tenant_id, dimension, member_id) DO UPDATE
    SET last_paid = excluded.last_paid, frequency = excluded.frequency, monetary = excluded.monetary
    WHERE (k.last_paid, k.frequency, k.monetary)
          IS DISTINCT FROM (excluded.last_paid, excluded.frequency, excluded.monetary)
    RETURNING 1
)
SELECT (SELECT count(*) FROM removed) + (SELECT count(*) FROM written)"""
    await conn.fetchval(sql, *kept.args(now, member_ids), tenant_id, dimension)


async def move(
    conn: Connection,
    tenant_id: str,
    dimension: str,
    kept: KeptFigures,
    now: dt.datetime,
    then: dt.datetime,
    excluded: list[str],
) -> None:
    """Moves the kept figures of `then` to `now` for every member but `excluded` by the orders that
    entered or left the window in between (models._moves). Only right for members with no fact
    recorded since `then` (the caller excludes the rest and evaluates them with `store`); a member
    with no figures gains them when an order enters. Every member moved is among those due then
    (due_store.due_members finds the same orders' times, SLACK wider)."""
    n = len(kept.moves_params)
    tenant, dim = f"${n + 1}::text", f"${n + 2}::text"
    await conn.execute(
        f"""
WITH moves AS ({kept.moves_sql}),
updated AS (
    UPDATE tagging.rfm_figures k
    SET last_paid = greatest(k.last_paid, v.entered), frequency = k.frequency + v.frequency,
        monetary = k.monetary + v.monetary
    FROM moves v
    WHERE k.dimension = {dim} AND k.member_id = v.member_id
      AND (v.entered > k.last_paid OR v.frequency <> 0 OR v.monetary <> 0)
    RETURNING 1
),
inserted AS (
    INSERT INTO tagging.rfm_figures (tenant_id, dimension, member_id, last_paid, frequency, monetary)
    SELECT {tenant}, {dim}, v.member_id, v.entered, v.frequency, v.monetary FROM moves v
    WHERE v.entered IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM tagging.rfm_figures k WHERE k.dimension = {dim} AND k.member_id = v.member_id)
    RETURNING 1
)
SELECT (SELECT count(*) FROM updated) + (SELECT count(*) FROM inserted)""",
        *kept.moves_args(now, then, excluded),
        tenant_id,
        dimension,
    )


@dataclass(frozen=True)
class Ranking:
    """The population's thresholds now, and the members whose segment they (or the days passed)
    moved since the previous ranking though their figures stayed; None when there is no previous
    ranking of this definition version to compare with. An empty population's thresholds are
    NULLs (nothing is ranked against them)."""

    thresholds: list[Decimal | None]
    moved: list[str] | None


async def rank(
    conn: Connection,
    tenant_id: str,
    dimension: str,
    version: int,
    kept: KeptFigures,
    now: dt.datetime,
    *,
    since_previous: bool,
) -> Ranking:
    """Computes the thresholds over every member's kept figures at `now` and records them as the
    dimension's ranking; with `since_previous`, also finds the members they move (see Ranking).
    The caller ranks those (and the members whose figures it stored) in the same transaction."""
    previous = await conn.fetchrow(
        "SELECT definition_version, ranked_at, thresholds FROM tagging.rfm_rankings WHERE dimension = $1",
        dimension,
    )
    # Thresholds of an empty population are NULLs: nothing was ranked against them.
    if not (
        since_previous
        and previous is not None
        and previous["definition_version"] == version
        and None not in previous["thresholds"]
    ):
        previous = None
    row = await conn.fetchrow(
        kept.thresholds_sql,
        now,
        dimension,
        previous["ranked_at"] if previous is not None else None,
        previous["thresholds"] if previous is not None else None,
    )
    assert row is not None
    await conn.execute(
        """INSERT INTO tagging.rfm_rankings AS r (tenant_id, dimension, definition_version, ranked_at,
                                                  thresholds)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (tenant_id, dimension) DO UPDATE
           SET definition_version = excluded.definition_version, ranked_at = excluded.ranked_at,
               thresholds = excluded.thresholds""",
        tenant_id,
        dimension,
        version,
        now,
        row["t"],
    )
    return Ranking(list(row["t"]), list(row["moved"]) if row["moved"] is not None else None)
