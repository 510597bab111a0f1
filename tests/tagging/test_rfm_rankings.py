"""An RFM recompute ranks again only the members whose own figures moved and those whose segment
the population's new thresholds (or the days passed) moved (models.KeptFigures, rfm_rankings):
everyone else holds what they held. The figures of members with no new fact are moved by the
orders that entered or left the window, and must equal those of all their orders. The count of
members ranked proves the rest were left alone; the tags, compared with the models evaluated from
every order, prove none was missed."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from memberops.tagging.v1 import models_pb2

from runtime.db import Database
from services.tagging import builtins, catalog
from services.tagging.catalog import Catalog
from services.tagging.domain import MemberInput, OrderInput, OrderLine, Profile
from services.tagging.evaluation import Tagger
from tests.conftest import unique
from tests.tagging.scheduled_writers import writers

NOW = dt.datetime(2021, 3, 1, 9, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
RFM = ["rfm_segment", "rfm_quintile_segment"]


async def _from_facts(db: Database, tenant: str, dimension: str, at: dt.datetime) -> dict[str, list[str]]:
    """The model's segments at `at` evaluated from every order (the statement ExplainTags runs)."""
    spec = next(spec for spec in builtins.definitions() if spec.dimension == dimension)
    compiled = catalog.compile_definition(spec, filtered=False)
    async with db.transaction(tenant, readonly=True) as conn:
        rows = await conn.fetch(compiled.sql, *compiled.args(at))
    return {row["member_id"]: list(row["tag_values"]) for row in rows if row["tag_values"]}


async def _figures(db: Database, tenant: str, dimension: str) -> list[tuple[Any, ...]]:
    async with db.transaction(tenant, readonly=True) as conn:
        rows = await conn.fetch(
            """SELECT member_id, last_paid, frequency, monetary FROM tagging.rfm_figures
                   WHERE dimension = $1""",
            dimension,
        )
    return sorted(tuple(row) for row in rows)


async def _figures_from_facts(
    db: Database, tenant: str, dimension: str, at: dt.datetime
) -> list[tuple[Any, ...]]:
    spec = next(spec for spec in builtins.definitions() if spec.dimension == dimension)
    kept = catalog.kept_figures(spec)
    assert kept is not None
    async with db.transaction(tenant, readonly=True) as conn:
        rows = await conn.fetch(kept.sql, *kept.args(at, None))
    return sorted(tuple(row) for row in rows)


async def _held(db: Database, tenant: str, dimension: str) -> dict[str, list[str]]:
    async with db.transaction(tenant, readonly=True) as conn:
        rows = await conn.fetch(
            "SELECT member_id, value FROM tagging.member_tags WHERE dimension = $1 AND valid_to IS NULL",
            dimension,
        )
    return {row["member_id"]: [row["value"]] for row in rows}


async def test_a_day_later_only_moved_members_are_ranked_again(db: Database) -> None:
    tenant = unique("rfmrank")
    tagger = Tagger(db)
    members, facts = writers(db, tagger)
    await Catalog(db).seed(tenant, builtins.definitions())

    async def order(order_id: str, member_id: str, days_ago: float, amount: int) -> None:
        line = OrderLine("1", sku="s", category="a", quantity=1, unit_price_minor=amount)
        await facts.record_order(
            tenant, OrderInput(order_id, member_id, NOW - days_ago * DAY, amount, (line,)), NOW
        )

    # Eight members of one order each, 1,000-8,000 spent; "big" spent 10,000 twice, the first of
    # which leaves the year's window half a day from now. Then the mean spend falls from 6,222 to
    # 5,111: the member of 6,000 rises above it, though nothing of theirs changed.
    for i in range(1, 9):
        member_id = f"m{i}"
        await members.upsert(tenant, MemberInput(member_id, Profile(register_time=NOW - 800 * DAY)), NOW)
        await order(f"o{i}", member_id, 10 * i, 1_000 * i)
    await members.upsert(tenant, MemberInput("big", Profile(register_time=NOW - 800 * DAY)), NOW)
    await order("b1", "big", 364.5, 10_000)
    await order("b2", "big", 5, 10_000)
    # Recorded now, paid a few minutes ahead (a caller's clock): it enters m3's figures only at the
    # next recompute, when m3 has no new fact.
    await order("m3-ahead", "m3", -3 / 1440, 500)

    first = {r.dimension: r for r in await tagger.recompute(tenant, RFM, NOW)}
    assert all(not r.incremental and r.evaluated == 9 for r in first.values())

    later = NOW + DAY
    results = {r.dimension: r for r in await tagger.recompute(tenant, RFM, later)}
    moved: dict[str, set[str]] = {}
    for dimension in RFM:
        assert await _figures(db, tenant, dimension) == await _figures_from_facts(
            db, tenant, dimension, later
        )
        before = await _from_facts(db, tenant, dimension, NOW)
        after = await _from_facts(db, tenant, dimension, later)
        assert await _held(db, tenant, dimension) == after, dimension
        moved[dimension] = {m for m in after if before.get(m) != after[m]} - {"big", "m3"}
        # "big" and m3 by their own figures, the others by the thresholds alone.
        assert results[dimension].incremental, dimension
        assert results[dimension].evaluated == len(moved[dimension]) + 2 < 9, (dimension, moved)
    assert "m6" in moved["rfm_segment"]


async def test_a_member_at_the_mean_is_not_above_it(db: Database) -> None:
    """The mean split marks an axis high only strictly beyond the mean (R below it, F and M above):
    "mid" sits exactly at all three means and is low on every axis."""
    tenant = unique("rfmtie")
    tagger = Tagger(db)
    members, facts = writers(db, tagger)
    await Catalog(db).seed(tenant, builtins.definitions())
    # (days since each order) at 1,000 each: R 10 / 20 / 30, F 1 / 2 / 3, M 1,000 / 2,000 / 3,000.
    for member_id, days in (("recent", [10]), ("mid", [20, 25]), ("often", [30, 35, 40])):
        await members.upsert(tenant, MemberInput(member_id, Profile(register_time=NOW - 800 * DAY)), NOW)
        for i, day in enumerate(days):
            line = OrderLine("1", sku="s", category="a", quantity=1, unit_price_minor=1_000)
            order = OrderInput(f"{member_id}-{i}", member_id, NOW - day * DAY, 1_000, (line,))
            await facts.record_order(tenant, order, NOW)
    await tagger.recompute(tenant, ["rfm_segment"], NOW)
    assert await _held(db, tenant, "rfm_segment") == {
        "recent": ["general_development"],
        "mid": ["general_win_back"],
        "often": ["important_retention"],
    }


async def test_all_history_figures_move_only_by_orders_entering(db: Database) -> None:
    """A model over all history (window 0) has no leaving orders: a member with no new fact gains
    only the orders that became paid since, and its old orders keep counting."""
    tenant = unique("rfmall")
    # Every share of members may go incrementally: one of three is due.
    tagger = Tagger(db, incremental_share=1.0)
    members, facts = writers(db, tagger)
    segment = next(spec for spec in builtins.definitions() if spec.dimension == "rfm_segment")
    spec = dataclasses.replace(
        segment,
        dimension="rfm_all_history",
        model=models_pb2.Model(rfm_mean_split=models_pb2.RfmMeanSplit(window_days=0)),
    )
    await Catalog(db).seed(tenant, [spec])
    for member_id, days in (("old", [900, 800]), ("ahead", [400, -3 / 1440]), ("plain", [30])):
        await members.upsert(tenant, MemberInput(member_id, Profile(register_time=NOW - 1000 * DAY)), NOW)
        for i, day in enumerate(days):
            line = OrderLine("1", sku="s", category="a", quantity=1, unit_price_minor=1_000)
            order = OrderInput(f"{member_id}-{i}", member_id, NOW - day * DAY, 1_000, (line,))
            await facts.record_order(tenant, order, NOW)
    await tagger.recompute(tenant, [spec.dimension], NOW)
    kept = catalog.kept_figures(spec)
    assert kept is not None
    later = NOW + 400 * DAY
    (result,) = await tagger.recompute(tenant, [spec.dimension], later)
    assert result.incremental
    async with db.transaction(tenant, readonly=True) as conn:
        fresh = sorted(tuple(row) for row in await conn.fetch(kept.sql, *kept.args(later, None)))
    assert await _figures(db, tenant, spec.dimension) == fresh
    # Two orders each for "old" and "ahead" (the second paid after the first recompute).
    assert [(row[0], row[2]) for row in fresh] == [("ahead", 2), ("old", 2), ("plain", 1)]
