"""The 10M bench's members-and-tags generator (bench/tag_dataset.py) at a few hundred members, in
databases of its own beside the suite's: the same rows every time, tags only of the seeded catalog's
dimensions at their versions, fact tags exactly the profile's, and the 1M generator's members."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from bench import tag_dataset
from services.tagging import builtins
from services.tagging.catalog import Cardinality
from tests.conftest import unique
from tests.replica_reads import with_database

MEMBERS = 400


@asynccontextmanager
async def _database(dsn: str) -> AsyncIterator[str]:
    name = unique("tagdata").replace("-", "_")
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        yield with_database(dsn, name)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def _generated(dsn: str) -> dict[str, Any]:
    async with _database(dsn) as db_dsn:
        await tag_dataset.migrate(db_dsn)
        generated = await tag_dataset.generate(db_dsn, MEMBERS, log=lambda _: None)
        conn = await asyncpg.connect(db_dsn)
        try:
            return {
                "generated": generated,
                "members": [
                    tuple(row)
                    for row in await conn.fetch(
                        """SELECT member_id, member_no, gender, city_tier, level, birthday, city,
                                  register_time FROM tagging.members ORDER BY member_id"""
                    )
                ],
                "tags": [
                    tuple(row)
                    for row in await conn.fetch(
                        """SELECT id, member_id, dimension, value, definition_version, exclusive, valid_from
                           FROM tagging.member_tags WHERE valid_to IS NULL ORDER BY id"""
                    )
                ],
                "catalog": {
                    row["dimension"]: row["current_version"]
                    for row in await conn.fetch(
                        "SELECT dimension, current_version FROM tagging.tag_definitions"
                    )
                },
            }
        finally:
            await conn.close()


async def test_the_same_rows_every_time_with_tags_of_the_catalog(pg_dsn: str) -> None:
    first, second = await _generated(pg_dsn), await _generated(pg_dsn)
    assert first["members"] == second["members"]
    assert first["tags"] == second["tags"]
    members, tags = first["members"], first["tags"]
    assert len(members) == MEMBERS == first["generated"].members
    assert len(tags) == first["generated"].tags
    assert [m[0] for m in members] == [f"m{i:08d}" for i in range(1, MEMBERS + 1)]
    assert len({m[1] for m in members}) == MEMBERS  # every member numbered, once

    # Every built-in dimension is held by someone, at the catalog's version, exclusive when single.
    single = {d.dimension for d in builtins.definitions() if d.cardinality == Cardinality.SINGLE}
    assert {t[2] for t in tags} == {d.dimension for d in builtins.definitions()} == set(first["catalog"])
    for _, _, dimension, _, version, exclusive, _ in tags:
        assert version == first["catalog"][dimension]
        assert exclusive == (dimension in single)
    held: dict[tuple[str, str], list[str]] = {}
    for _, member_id, dimension, value, *_ in tags:
        held.setdefault((member_id, dimension), []).append(value)
    assert all(len(values) == 1 for (_, dimension), values in held.items() if dimension in single)

    # Fact tags are the profile's.
    genders = {1: "female", 2: "male", 3: "other"}
    tiers = {1: "1", 2: "new_1", 3: "2", 4: "3", 5: "4", 6: "5"}
    for member_id, _, gender, city_tier, level, *_ in members:
        assert held.get((member_id, "gender")) == ([genders[gender]] if gender in genders else None)
        assert held.get((member_id, "city_tier")) == ([tiers[city_tier]] if city_tier in tiers else None)
        assert held.get((member_id, "level")) == ([level] if level in builtins.LEVEL_CODES else None)
