"""The RFM models against one hand-written SQL statement computing the same segments.

On the cached generated dataset (MEMBEROPS_BENCH_MEMBERS members, default 1,000,000), evaluated at
dataset.NOW, for the built-in dimensions `rfm_segment` (mean split) and `rfm_quintile_segment`
(quintile scores, R x F map). Both sides run the same shape, `SELECT segment, count(*) FROM (...)
GROUP BY segment`, in a tenant transaction under the service's role (row-level security on), in
interleaved rounds; the medians are compared. The service side is the SQL the tagging service
compiles for the stored definition (`services.tagging.catalog.compile_definition`).

Then the service computes the tags for real (RecomputeTags of the two dimensions) and the counts
per segment it reports (GetTagStats) must equal the hand-written statement's; a mismatch fails
the bench.

The hand-written statements follow this spec, not the service's code: population = members with
at least one counted order (not fully refunded) paid by NOW; R = whole days since the last
counted order (all history); F = counted orders paid in (NOW - window, NOW] (all history when the
window is 0); M = their net amount. Mean split: R high below the mean, F and M high above it.
Quintiles: score = ceil(5 * cume_dist()) ordered by R descending, F and M ascending.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
from memberops.tagging.v1 import models_pb2, tagging_service_pb2, tagging_service_pb2_grpc, tags_pb2

from bench import dataset, servers
from services.tagging import catalog

ROUNDS = 3
DEADLINE = 3600
ENTER_TENANT = "SELECT set_config('role', 'memberops_app', true), set_config('memberops.tenant_id', $1, true)"

_RFM = """
WITH counted AS (
    SELECT member_id, paid_time, amount_minor - refunded_amount_minor AS net
    FROM tagging.orders
    WHERE paid_time <= $1 AND NOT (amount_minor > 0 AND refunded_amount_minor >= amount_minor)
),
rfm AS (
    SELECT member_id,
           floor(extract(epoch FROM $1 - max(paid_time)) / 86400) AS r,
           count(*) FILTER (WHERE $2 = 0 OR paid_time > $1 - make_interval(days => $2)) AS f,
           COALESCE(sum(net) FILTER (WHERE $2 = 0 OR paid_time > $1 - make_interval(days => $2)), 0) AS m
    FROM counted
    GROUP BY member_id
)"""

HAND_MEAN_SPLIT = (
    _RFM
    + """,
flags AS (
    SELECT member_id, r, f, m,
           r < avg(r) OVER () AS r_high, f > avg(f) OVER () AS f_high, m > avg(m) OVER () AS m_high
    FROM rfm
)
SELECT member_id, r, f, m,
    CASE WHEN r_high AND f_high AND m_high THEN 'important_value'
         WHEN r_high AND NOT f_high AND m_high THEN 'important_development'
         WHEN NOT r_high AND f_high AND m_high THEN 'important_retention'
         WHEN NOT r_high AND NOT f_high AND m_high THEN 'important_win_back'
         WHEN r_high AND f_high THEN 'general_value'
         WHEN r_high THEN 'general_development'
         WHEN f_high THEN 'general_retention'
         ELSE 'general_win_back' END AS segment
FROM flags"""
)

HAND_QUINTILES = (
    _RFM
    + """,
scores AS (
    SELECT member_id, r, f, m,
           ceil(5 * cume_dist() OVER (ORDER BY r DESC))::int AS r_score,
           ceil(5 * cume_dist() OVER (ORDER BY f))::int AS f_score,
           ceil(5 * cume_dist() OVER (ORDER BY m))::int AS m_score
    FROM rfm
)
SELECT member_id, r, f, m, r_score, f_score, m_score,
    CASE WHEN r_score = 5 AND f_score >= 4 THEN 'champions'
         WHEN r_score IN (3, 4) AND f_score >= 4 THEN 'loyal'
         WHEN r_score >= 4 AND f_score IN (2, 3) THEN 'potential_loyalists'
         WHEN r_score = 5 AND f_score = 1 THEN 'new'
         WHEN r_score = 4 AND f_score = 1 THEN 'promising'
         WHEN r_score = 3 AND f_score = 3 THEN 'need_attention'
         WHEN r_score = 3 THEN 'about_to_sleep'
         WHEN f_score = 5 THEN 'cant_lose'
         WHEN f_score >= 3 THEN 'at_risk'
         ELSE 'hibernating' END AS segment
FROM scores"""
)


@dataclass(frozen=True)
class Model:
    builtin: str  # the built-in dimension
    which: str  # the Model oneof
    hand_sql: str
    label: str

    def fallback(self) -> str:
        return f"bench_{self.builtin}"


MODELS = (
    Model("rfm_segment", "rfm_mean_split", HAND_MEAN_SPLIT, "mean split"),
    Model("rfm_quintile_segment", "rfm_quintiles", HAND_QUINTILES, "quintiles"),
)


def counting(sql: str, segment: str, where: str = "true") -> str:
    """The shape both sides are timed in: members per segment."""
    return f"SELECT {segment} AS segment, count(*) AS n FROM ({sql}) AS x WHERE {where} GROUP BY 1"


async def run_counts(conn: asyncpg.Connection, sql: str, args: list[Any]) -> tuple[float, dict[str, int]]:
    async with conn.transaction(readonly=True):
        await conn.execute(ENTER_TENANT, servers.BENCH_TENANT)
        started = time.perf_counter()
        rows = await conn.fetch(sql, *args)
        seconds = time.perf_counter() - started
    return seconds, {row["segment"]: row["n"] for row in rows if row["segment"] is not None}


async def definition(stub: Any, dimension: str) -> tags_pb2.TagDefinition | None:
    try:
        found: tags_pb2.TagDefinition = await stub.GetTagDefinition(
            tagging_service_pb2.GetTagDefinitionRequest(name=f"tagDefinitions/{dimension}"),
            metadata=servers.AUTH,
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    return found if found.state == tags_pb2.TAG_DEFINITION_STATE_ACTIVE else None


async def ensure_definition(stub: Any, model: Model) -> tags_pb2.TagDefinition:
    """The built-in dimension, or (before built-ins are seeded) one made by the bench with 365 days."""
    found = await definition(stub, model.builtin)
    if found is not None:
        return found
    print(f"note: no built-in {model.builtin}; using {model.fallback()} ({model.which}, 365 days) made here")
    params = models_pb2.Model()
    getattr(params, model.which).window_days = 365
    spec = tags_pb2.TagDefinition(
        dimension=model.fallback(),
        category=tags_pb2.TAG_CATEGORY_TRANSACTION,
        kind=tags_pb2.TAG_KIND_MODEL,
        refresh_policy=tags_pb2.REFRESH_POLICY_SCHEDULED,
        cardinality=tags_pb2.CARDINALITY_SINGLE,
        model=params,
    )
    created: tags_pb2.TagDefinition = await stub.CreateTagDefinition(
        tagging_service_pb2.CreateTagDefinitionRequest(tag_definition=spec), metadata=servers.AUTH
    )
    return created


def compiler() -> Callable[[dict[str, Any]], tuple[str, Callable[[], list[Any]]]] | None:
    """The service's compiler for a stored definition body, or None if it has none (yet)."""
    compile_definition = getattr(catalog, "compile_definition", None)
    from_body = getattr(catalog, "from_body", None)
    if compile_definition is None or from_body is None:
        return None

    def compile_body(body: dict[str, Any]) -> tuple[str, Callable[[], list[Any]]]:
        compiled = compile_definition(from_body(body), filtered=False)
        return compiled.sql, lambda: list(compiled.args(dataset.NOW))

    return compile_body


async def stored_body(conn: asyncpg.Connection, dimension: str, version: int) -> dict[str, Any]:
    body = await conn.fetchval(
        """SELECT body::text FROM tagging.tag_definition_versions
           WHERE tenant_id = $1 AND dimension = $2 AND version = $3""",
        servers.BENCH_TENANT,
        dimension,
        version,
    )
    result: dict[str, Any] = json.loads(body)
    return result


async def tag_counts(stub: Any, dsn: str, dimension: str) -> tuple[str, dict[str, int]]:
    """Members per value of a dimension: GetTagStats, or a count of current tags without it."""
    try:
        reply = await stub.GetTagStats(
            tagging_service_pb2.GetTagStatsRequest(dimensions=[dimension]), metadata=servers.AUTH, timeout=600
        )
        (stats,) = [d for d in reply.dimensions if d.dimension == dimension]
        return "GetTagStats", {v.value: v.member_count for v in stats.values if v.member_count}
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """SELECT value, count(*) AS n FROM tagging.member_tags
               WHERE tenant_id = $1 AND dimension = $2 AND valid_to IS NULL GROUP BY value""",
            servers.BENCH_TENANT,
            dimension,
        )
    finally:
        await conn.close()
    return "SQL on member_tags", {row["value"]: row["n"] for row in rows}


def median_line(name: str, runs: list[float]) -> str:
    listed = ", ".join(f"{r:.2f}" for r in runs)
    return f"    {name:<24} median {statistics.median(runs):7.2f} s  (runs {listed})"


@dataclass
class Measured:
    hand_runs: list[float] = field(default_factory=list)
    service_runs: list[float] = field(default_factory=list)
    hand_counts: dict[str, int] = field(default_factory=dict)
    # None when the service side was timed through RecomputeTags.
    service_counts: dict[str, int] | None = None
    recompute_seconds: float = 0.0
    tag_source: str = ""
    tag_counts: dict[str, int] = field(default_factory=dict)


async def recompute(stub: Any, dimension: str) -> float:
    started = time.perf_counter()
    await stub.RecomputeTags(
        tagging_service_pb2.RecomputeTagsRequest(dimensions=[dimension]),
        metadata=servers.AUTH,
        timeout=DEADLINE,
    )
    return time.perf_counter() - started


async def measure(
    stub: Any,
    dsn: str,
    conn: asyncpg.Connection,
    model: Model,
    found: tags_pb2.TagDefinition,
    window: int,
    rounds: int,
) -> Measured:
    compile_body = compiler()
    result = Measured()
    hand_sql = counting(model.hand_sql, "x.segment")
    service_sql = ""
    args: Callable[[], list[Any]] = list
    if compile_body is not None:
        sql, args = compile_body(await stored_body(conn, found.dimension, found.version))
        service_sql = counting(sql, "x.tag_values[1]", where="cardinality(x.tag_values) > 0")
    else:
        await recompute(stub, found.dimension)  # writes the tags; the timed runs are steady state
    for _ in range(rounds):  # interleaved, so drift on a noisy machine hits both alike
        seconds, result.hand_counts = await run_counts(conn, hand_sql, [dataset.NOW, window])
        result.hand_runs.append(seconds)
        if compile_body is not None:
            seconds, result.service_counts = await run_counts(conn, service_sql, args())
        else:
            seconds = await recompute(stub, found.dimension)
        result.service_runs.append(seconds)
    result.recompute_seconds = await recompute(stub, found.dimension)
    result.tag_source, result.tag_counts = await tag_counts(stub, dsn, found.dimension)
    return result


def report(model: Model, found: tags_pb2.TagDefinition, window: int, m: Measured) -> list[str]:
    """Prints one model's figures and counts; returns its failures."""
    compiled = m.service_counts is not None
    print(f"{found.dimension} ({model.label}, window {window} days, definition v{found.version})")
    print(median_line("hand-written SQL", m.hand_runs))
    print(median_line("service compiled SQL" if compiled else "RecomputeTags (steady)", m.service_runs))
    ratio = statistics.median(m.service_runs) / statistics.median(m.hand_runs)
    print(f"    ratio service/hand-written  {ratio:.2f}x  (target <= 1.5x, issue 3)")
    print(f"    RecomputeTags([{found.dimension}]) {m.recompute_seconds:.2f} s (writes the tags)")
    values = [v.value for v in found.values]
    values += sorted(set(m.hand_counts) - set(values))
    print(
        f"    {'segment':<24} {'hand-written':>12} {'compiled' if compiled else '':>12} "
        f"{'tags':>12}  ({m.tag_source})"
    )
    for value in values:
        compiled_n = f"{m.service_counts.get(value, 0):,}" if m.service_counts is not None else ""
        print(
            f"    {value:<24} {m.hand_counts.get(value, 0):>12,} {compiled_n:>12} "
            f"{m.tag_counts.get(value, 0):>12,}"
        )
    failures = []
    if m.tag_counts != m.hand_counts:
        failures.append(f"{found.dimension}: the service's tags differ from the hand-written SQL")
    if m.service_counts is not None and m.service_counts != m.hand_counts:
        failures.append(f"{found.dimension}: the compiled SQL differs from the hand-written SQL")
    return failures


async def main() -> None:
    members = dataset.members_from_env()
    rounds = int(os.environ.get("BENCH_ROUNDS", str(ROUNDS)))
    failures: list[str] = []
    async with dataset.cached(members) as (dsn, generated):
        print(f"data: {generated.line()} (cached in {dataset.cache_dir(members)})")
        await dataset.reset_tags(dsn)
        settings = await dataset.pg_settings(dsn)
        print("postgres: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
        if compiler() is None:
            print(
                "note: services.tagging has no compile_definition: timing RecomputeTags (steady state) "
                "of each dimension instead of its compiled query"
            )
        async with (
            servers.service("tagging", dsn, clock=f"frozen:{dataset.NOW.isoformat()}") as address,
            grpc.aio.insecure_channel(address) as channel,
        ):
            stub: Any = tagging_service_pb2_grpc.TaggingServiceStub(channel)
            conn = await asyncpg.connect(dsn)
            try:
                chosen = []
                for model in MODELS:
                    found = await ensure_definition(stub, model)
                    chosen.append((model, found, getattr(found.model, model.which).window_days))
                # Warm the cache: the first statement to read the orders should not pay for it.
                await run_counts(conn, counting(MODELS[0].hand_sql, "x.segment"), [dataset.NOW, chosen[0][2]])
                for model, found, window in chosen:
                    measured = await measure(stub, dsn, conn, model, found, window, rounds)
                    failures += report(model, found, window, measured)
            finally:
                await conn.close()
    for failure in failures:
        print(f"MISMATCH {failure}")
    if failures:
        raise SystemExit(1)
