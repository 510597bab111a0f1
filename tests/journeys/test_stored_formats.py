"""Stored definitions stay loadable: validated when written, upgraded (never re-validated) when
read, so a version a member runs survives a validation rule tightened after it was stored."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from runtime import app
from runtime.db import Database
from services.journeys import convert
from tests.conftest import TENANT_ACME, unique
from tests.journeys.helpers import get, simple
from workflows.journeys import loading, store
from workflows.journeys.definition import WaitUntilHour

if TYPE_CHECKING:
    from memberops.journeys.v1.journeys_service_pb2_grpc import JourneyServiceAsyncStub as Stub


async def insert_row(db: Database, key: str, data: dict[str, object], format_version: int | None) -> None:
    """A row as an older MemberOps wrote it (`format_version` None: before the column existed)."""
    content = json.dumps(data)
    async with db.transaction(TENANT_ACME) as conn:
        await conn.execute(
            f"""INSERT INTO journeys.definitions (tenant_id, journey_key, version, content, content_hash
                                                  {", format_version" if format_version else ""})
                VALUES ($1, $2, 1, $3::jsonb, 'old'{", $4" if format_version else ""})""",
            TENANT_ACME,
            key,
            content,
            *([format_version] if format_version else []),
        )


async def test_a_row_breaking_a_rule_tightened_since_still_loads(
    journeys: app.RunningService, db: Database, journeys_stub: Stub
) -> None:
    key = unique("j")
    data = loading.to_data(simple(key))
    data["frequency_cap"] = 99  # valid once, say, before the cap of 20
    await insert_row(db, key, data, loading.FORMAT_VERSION)
    stored = await store.get_definition(db, TENANT_ACME, key)
    assert stored.definition.frequency_cap == 99
    assert [d.definition.key for d in await store.latest_definitions(db, TENANT_ACME, [key])] == [key]
    read = await get(journeys_stub, key)
    assert read.definition.frequency_cap == 99


async def test_an_old_format_row_is_upgraded(journeys: app.RunningService, db: Database) -> None:
    key = unique("j")
    definition = simple(key)
    data = loading.to_data(definition)
    del data["max_entry_delay"]
    data["steps"] = [{"id": "hour", "wait_until_hour": {"hour": 10, "minute": 0}}, *data["steps"]]
    await insert_row(db, key, data, None)
    stored = await store.get_definition(db, TENANT_ACME, key)
    assert stored.definition.max_entry_delay == "1d"
    assert stored.definition.steps[0].wait_until_hour == WaitUntilHour(hour=10, minute=0, preferred=False)
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        assert (
            await conn.fetchval(
                "SELECT format_version FROM journeys.definitions WHERE tenant_id = $1 AND journey_key = $2",
                TENANT_ACME,
                key,
            )
            == 1
        )


async def test_new_versions_are_written_in_the_current_format(
    journeys: app.RunningService, db: Database
) -> None:
    definition = simple(unique("j"))
    await store.put_definition(db, TENANT_ACME, definition)
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        row = await conn.fetchrow(
            """SELECT version, content::text AS content, format_version FROM journeys.definitions
               WHERE tenant_id = $1 AND journey_key = $2""",
            TENANT_ACME,
            definition.key,
        )
    assert row is not None and row["format_version"] == loading.FORMAT_VERSION
    assert store.stored(row).definition == definition


def test_rows_that_cannot_be_read_say_so_without_blaming_the_caller() -> None:
    text = loading.to_json(simple("k"))
    with pytest.raises(loading.UnreadableDefinition, match="format 99"):
        loading.from_stored(text, 99)
    with pytest.raises(loading.UnreadableDefinition, match="steps"):
        loading.from_stored(json.dumps({**json.loads(text), "steps": "none"}), loading.FORMAT_VERSION)
    assert convert.to_proto(loading.from_stored(text, loading.FORMAT_VERSION)).key == "k"
