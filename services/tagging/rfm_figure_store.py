"""SQL of tagging.rfm_figures (migration 0029): each member's own RFM figures as the model's
previous recompute found them. Runs on a connection inside a tenant transaction."""

from __future__ import annotations

import datetime as dt

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
