"""An export's cursor gives its connection back when another export waits or its client is slow,
and reads on after the last id once reopened (`services.audience.export_reader`)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from runtime.db import Connection, Database
from services.audience import export_reader
from services.audience.export_reader import ExportReader, ReadSlots
from tests.conftest import TENANT_ACME

HANG = 10
IDS = ("a", "b", "c", "d", "e")


async def declare(conn: Connection, after: str) -> Any:
    values = ", ".join(f"('{i}')" for i in IDS)
    sql = f"SELECT member_id FROM (VALUES {values}) AS v(member_id) WHERE member_id > $1 ORDER BY member_id"
    return await conn.cursor(sql, after)


def reader(db: Database, slots: ReadSlots, page_size: int = 2) -> ExportReader:
    return ExportReader(slots, lambda: db.transaction(TENANT_ACME, readonly=True), declare, page_size)


async def test_a_reopened_cursor_reads_on_after_the_last_id(db: Database) -> None:
    pages = reader(db, ReadSlots(1))
    try:
        assert await pages.page() == ["a", "b"]
        await pages.close()
        assert await pages.page() == ["c", "d"]
        await pages.close(RuntimeError("the call was cancelled"))  # rolled back, slot given back
        assert await pages.page() == ["e"]
        assert await pages.page() == []
    finally:
        await pages.close()


async def test_a_waiting_export_takes_the_connection_of_one_about_to_wait_on_its_client(db: Database) -> None:
    slots = ReadSlots(1)
    first, second = reader(db, slots), reader(db, slots)
    try:
        assert await first.page() == ["a", "b"]
        waiting = asyncio.create_task(second.page())
        await asyncio.sleep(0)  # the task runs until it waits for the slot
        assert slots.contended
        await first.before_waiting()  # another export waits: the cursor is closed at once
        assert await asyncio.wait_for(waiting, HANG) == ["a", "b"]
        first.after_waiting()
        await second.close()
        assert await asyncio.wait_for(first.page(), HANG) == ["c", "d"]
    finally:
        await first.close()
        await second.close()


async def test_a_cursor_left_waiting_on_its_client_is_closed_after_the_hold(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_reader, "HOLD_SECONDS", 0.05)
    slots = ReadSlots(1)
    first, second = reader(db, slots), reader(db, slots)
    try:
        assert await first.page() == ["a", "b"]
        await first.before_waiting()  # nobody waits yet: the cursor stays open for the hold
        assert await asyncio.wait_for(second.page(), HANG) == ["a", "b"]
        await second.close()
        first.after_waiting()
        assert await asyncio.wait_for(first.page(), HANG) == ["c", "d"]
    finally:
        await first.close()
        await second.close()
