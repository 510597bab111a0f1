"""The migrations runner: in order, once, recorded, safe twice and concurrently, strict on edits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from runtime import app, migrations
from services.tagging import server as tagging_server
from tests.conftest import unique


@pytest.fixture
async def conn(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(pg_dsn)
    yield connection
    await connection.close()


def write(folder: Path, name: str, sql: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(sql)


def scratch_schema() -> str:
    return unique("mig").replace("-", "_")


async def test_service_migrations_applied_twice_change_nothing(pg_dsn: str, conn: asyncpg.Connection) -> None:
    await app.migrate(pg_dsn, tagging_server.DEFINITION)
    before = await conn.fetch(
        "SELECT version, checksum, applied_at FROM tagging.schema_migrations ORDER BY 1"
    )
    assert await app.migrate(pg_dsn, tagging_server.DEFINITION) == []
    after = await conn.fetch("SELECT version, checksum, applied_at FROM tagging.schema_migrations ORDER BY 1")
    assert before == after
    assert tagging_server.DEFINITION.migrations_dir is not None
    files = migrations.load(tagging_server.DEFINITION.migrations_dir)
    assert [r["version"] for r in after] == [m.version for m in files]


async def test_applies_in_order_and_records_each(tmp_path: Path, conn: asyncpg.Connection) -> None:
    schema = scratch_schema()
    write(tmp_path, "0001_first.sql", "CREATE TABLE t (tenant_id text, v int);")
    write(tmp_path, "0002_second.sql", "ALTER TABLE t ADD COLUMN w int;")
    assert await migrations.migrate(conn, schema, migrations.load(tmp_path)) == [1, 2]
    recorded = await conn.fetch(f"SELECT version, name FROM {schema}.schema_migrations ORDER BY 1")
    assert [(r["version"], r["name"]) for r in recorded] == [(1, "first"), (2, "second")]
    write(tmp_path, "0003_third.sql", "ALTER TABLE t ADD COLUMN x int;")
    assert await migrations.migrate(conn, schema, migrations.load(tmp_path)) == [3]


async def test_concurrent_runs_apply_each_file_once(tmp_path: Path, pg_dsn: str) -> None:
    schema = scratch_schema()
    # Not idempotent on purpose: a second application would fail on the duplicate table.
    write(tmp_path, "0001_create.sql", "CREATE TABLE once (tenant_id text);")
    write(tmp_path, "0002_fill.sql", "INSERT INTO once VALUES ('x');")
    loaded = migrations.load(tmp_path)
    connections = [await asyncpg.connect(pg_dsn) for _ in range(6)]
    try:
        results = await asyncio.gather(*(migrations.migrate(c, schema, loaded) for c in connections))
        assert sorted(results) == [[], [], [], [], [], [1, 2]]
        assert await connections[0].fetchval(f"SELECT count(*) FROM {schema}.once") == 1
    finally:
        await asyncio.gather(*(c.close() for c in connections))


async def test_a_failing_migration_leaves_nothing_half_applied(
    tmp_path: Path, conn: asyncpg.Connection
) -> None:
    schema = scratch_schema()
    write(tmp_path, "0001_ok.sql", "CREATE TABLE fine (tenant_id text);")
    write(tmp_path, "0002_broken.sql", "CREATE TABLE broken (tenant_id text); SELECT no_such_function();")
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await migrations.migrate(conn, schema, migrations.load(tmp_path))
    assert await conn.fetchval("SELECT to_regclass($1)", f"{schema}.fine") is None


async def test_editing_an_applied_migration_stops_the_start(tmp_path: Path, conn: asyncpg.Connection) -> None:
    schema = scratch_schema()
    write(tmp_path, "0001_first.sql", "CREATE TABLE t (tenant_id text);")
    await migrations.migrate(conn, schema, migrations.load(tmp_path))
    write(tmp_path, "0001_first.sql", "CREATE TABLE t (tenant_id text, sneaky int);")
    with pytest.raises(migrations.MigrationError, match="changed after it was applied"):
        await migrations.migrate(conn, schema, migrations.load(tmp_path))


@pytest.mark.parametrize("name", ["1_short.sql", "0001-dash.sql", "0001_UPPER.sql"])
def test_badly_named_files_are_refused(tmp_path: Path, name: str) -> None:
    write(tmp_path, name, "SELECT 1;")
    with pytest.raises(migrations.MigrationError, match="NNNN_description"):
        migrations.load(tmp_path)


def test_duplicate_numbers_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "0001_a.sql", "SELECT 1;")
    write(tmp_path, "0001_b.sql", "SELECT 1;")
    with pytest.raises(migrations.MigrationError, match="share a number"):
        migrations.load(tmp_path)
