"""`python -m deploy.cli migrate`: applies every MemberOps schema's migrations, then exits.

What the services and the worker do at start (runtime/app.py, workflows/worker.py), done once by a
migrations Job (Kubernetes) or a one-shot container (compose) before they start, so replicas
starting together find nothing to apply and a failed migration stops a rollout instead of
crash-looping every replica. Safe to run again: an applied file is skipped (runtime/migrations.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from runtime import logs, migrations
from runtime.config import Settings
from services.audience import server as audience_server
from services.journeys import server as journeys_server
from services.tagging import server as tagging_server
from services.tasks import server as tasks_server
from workflows.journeys import store as journeys_store


def schemas() -> list[tuple[str, Path]]:
    """(schema, migrations folder) of every service and of the worker, each schema once."""
    found: dict[str, Path] = {}
    owners = [
        (definition.schema, definition.migrations_dir)
        for definition in (
            tagging_server.DEFINITION,
            audience_server.DEFINITION,
            tasks_server.DEFINITION,
            journeys_server.DEFINITION,
        )
    ]
    # The worker's schema: today the journeys service's too, listed so a split stays migrated.
    owners.append((journeys_store.SCHEMA, journeys_store.MIGRATIONS))
    for schema, folder in owners:
        if schema is None or folder is None:
            continue
        directory = folder.resolve()
        if found.setdefault(schema, directory) != directory:
            raise migrations.MigrationError(f"schema {schema} has two migration folders")
    return list(found.items())


async def migrate_all(dsn: str) -> list[tuple[str, list[int]]]:
    """Applies what is missing, schema by schema; returns (schema, versions applied)."""
    conn = await asyncpg.connect(dsn)
    try:
        return [
            (schema, await migrations.migrate(conn, schema, migrations.load(directory)))
            for schema, directory in schemas()
        ]
    finally:
        await conn.close()


def main() -> int:
    settings = Settings.from_env()
    logs.configure(settings.log_level, service="migrate")
    done = asyncio.run(migrate_all(settings.require_database()))
    for schema, versions in done:
        applied = ", ".join(f"{version:04d}" for version in versions) or "nothing (up to date)"
        print(f"{schema:<10} applied {applied}")
    return 0
