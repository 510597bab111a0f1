"""Plain numbered SQL migrations, one folder and one PostgreSQL schema per service.

Files are named `NNNN_description.sql` and applied in order, each recorded with its checksum in
`<schema>.schema_migrations`. A run holds one advisory lock for its whole transaction, so services
starting together (or a test suite and `make up`) apply each file exactly once; a run that finds
everything applied does nothing; an applied file whose text changed stops the start-up, because
the database no longer matches what the code says it is.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from runtime.db import APP_ROLE

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql\Z")
_SCHEMA_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}\Z")
# pg_advisory_xact_lock key shared by every MemberOps migration run (roles are cluster-wide).
_LOCK_KEY = 0x4D454D42  # "MEMB"


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load(directory: Path) -> list[Migration]:
    """Reads the migration files of one folder; rejects stray names and duplicate numbers."""
    migrations: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path}: migration files are named NNNN_description.sql")
        migrations.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{directory}: two migrations share a number")
    return migrations


async def migrate(conn: asyncpg.Connection, schema: str, migrations: list[Migration]) -> list[int]:
    """Applies the missing migrations of `schema`; returns the versions it applied."""
    if not _SCHEMA_NAME.match(schema):
        raise MigrationError(f"bad schema name {schema!r}")
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await _ensure_app_role(conn)
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                    version integer PRIMARY KEY,
                    name text NOT NULL,
                    checksum text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        applied = {
            row["version"]: row["checksum"]
            for row in await conn.fetch(f"SELECT version, checksum FROM {schema}.schema_migrations")
        }
        done: list[int] = []
        for migration in migrations:
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"{schema} migration {migration.version:04d}_{migration.name} was changed "
                        "after it was applied; add a new migration instead"
                    )
                continue
            await conn.execute(f"SET LOCAL search_path = {schema}, public")
            await conn.execute(migration.sql)
            await conn.execute(
                f"INSERT INTO {schema}.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
            done.append(migration.version)
        await _grant_app_role(conn, schema)
        return done


async def _ensure_app_role(conn: asyncpg.Connection) -> None:
    """Creates the role requests run under (no login, no RLS bypass) and lets us switch to it."""
    exists = await conn.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", APP_ROLE)
    if not exists:
        await conn.execute(f"CREATE ROLE {APP_ROLE} NOLOGIN NOBYPASSRLS")
    is_member = await conn.fetchval("SELECT pg_has_role(current_user, $1, 'MEMBER')", APP_ROLE)
    if not is_member:
        await conn.execute(f"GRANT {APP_ROLE} TO CURRENT_USER")


async def _grant_app_role(conn: asyncpg.Connection, schema: str) -> None:
    await conn.execute(
        f"""GRANT USAGE ON SCHEMA {schema} TO {APP_ROLE};
            GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {APP_ROLE};
            GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {APP_ROLE};
            REVOKE ALL ON {schema}.schema_migrations FROM {APP_ROLE};"""
    )
