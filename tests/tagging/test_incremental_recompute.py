"""The incremental recompute gives what a full one gives: two tenants receive the same seeded random
members, facts (late ones among them), definition changes and clock moves; one is recomputed
incrementally (only members due or changed), the other in full, and after every round their tags,
tag history and tag-change feed entries are the same."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from memberops.tagging.v1 import models_pb2

from runtime.db import Database
from services.tagging import builtins, catalog, definition_store, member_tag_store
from services.tagging import server as tagging_server
from services.tagging.catalog import Catalog, DefinitionInput, TagValue
from services.tagging.domain import (
    BehaviorEvent,
    MemberInput,
    OrderInput,
    OrderLine,
    Profile,
    RefundInput,
)
from services.tagging.evaluation import INPUT_BITS, RecomputeResult, Tagger, held_is_then
from services.tagging.facts import Facts
from services.tagging.members import Members
from services.tagging.rules import Input
from tests.conftest import unique
from tests.tagging.rule_builders import Field, Fn, Op, agg, cond, field, not_
from tests.tagging.scheduled_writers import writers

ROUNDS = 8
MEMBERS = 40
CATEGORIES = ("a", "b", "c")
# Clock moves between recomputes: within a day, a day, and across the windows and thresholds.
STEPS = (dt.timedelta(hours=3), dt.timedelta(days=1), dt.timedelta(days=9), dt.timedelta(days=31),
         dt.timedelta(days=47), dt.timedelta(days=95))  # fmt: skip


def _extra_dimensions(threshold: int, suffix: str = "") -> list[DefinitionInput]:
    """Rules reaching time every way the language allows: days since an order or event, windows
    of orders, lines and events, days since registration, age. `suffix` renames the recency values."""

    def rule_dimension(name: str, values: Sequence[tuple[str, Any]], multi: bool = False) -> DefinitionInput:
        return DefinitionInput(
            dimension=name,
            category=catalog.Category.TRANSACTION,
            kind=catalog.Kind.RULE,
            refresh_policy=catalog.Refresh.SCHEDULED,
            cardinality=catalog.Cardinality.MULTI if multi else catalog.Cardinality.SINGLE,
            values=tuple(TagValue(value=v, rule=r) for v, r in values),
        )

    since_order = agg(Fn.AGGREGATE_FUNCTION_DAYS_SINCE_LAST_ORDER)
    carts = agg(Fn.AGGREGATE_FUNCTION_EVENT_COUNT, 14, event_kinds=[2])
    a_items = agg(Fn.AGGREGATE_FUNCTION_ITEM_COUNT, 7, categories=["a"])
    orders_25 = agg(Fn.AGGREGATE_FUNCTION_ORDER_COUNT, 25)
    return [
        rule_dimension(
            "rc_counts",
            [
                ("many", cond(orders_25, Op.OPERATOR_GE, 3)),
                ("two", cond(orders_25, Op.OPERATOR_EQ, 2)),
                ("monthly", cond(agg(Fn.AGGREGATE_FUNCTION_ORDERS_PER_MONTH, 40), Op.OPERATOR_GT, 0.75)),
                ("one", cond(orders_25, Op.OPERATOR_IS_SET)),
            ],
        ),
        rule_dimension(
            "rc_order_recency",
            [
                ("recent" + suffix, cond(since_order, Op.OPERATOR_LE, threshold)),
                ("mid" + suffix, cond(since_order, Op.OPERATOR_BETWEEN, threshold + 1, 45.5)),
                ("lapsed" + suffix, cond(since_order, Op.OPERATOR_IS_SET)),
            ],
        ),
        rule_dimension(
            "rc_events",
            [
                (
                    "carting",
                    cond(carts, Op.OPERATOR_GE, 1),
                ),
                ("gone", cond(agg(Fn.AGGREGATE_FUNCTION_DAYS_SINCE_LAST_EVENT, 60), Op.OPERATOR_GT, 7)),
                ("busy", cond(agg(Fn.AGGREGATE_FUNCTION_EVENT_COUNT, 30), Op.OPERATOR_GE, 3)),
            ],
        ),
        rule_dimension(
            "rc_member",
            [
                ("fresh", cond(field(Field.PROFILE_FIELD_DAYS_SINCE_REGISTRATION), Op.OPERATOR_LT, 30)),
                ("thirties", cond(field(Field.PROFILE_FIELD_AGE), Op.OPERATOR_BETWEEN, 30, 39)),
                ("veteran", cond(field(Field.PROFILE_FIELD_DAYS_SINCE_REGISTRATION), Op.OPERATOR_GE, 365)),
            ],
        ),
        rule_dimension(
            "rc_spend",
            [
                ("spender", cond(agg(Fn.AGGREGATE_FUNCTION_ORDER_AMOUNT_SUM, 30), Op.OPERATOR_GE, 500)),
                (
                    "a_week",
                    cond(a_items, Op.OPERATOR_GE, 1),
                ),
                ("never", not_(cond(agg(Fn.AGGREGATE_FUNCTION_ORDER_COUNT), Op.OPERATOR_GE, 1))),
                ("steady", cond(agg(Fn.AGGREGATE_FUNCTION_ORDERS_PER_MONTH, 60), Op.OPERATOR_GE, 1)),
            ],
            multi=True,
        ),
    ]


# Windows short enough for orders to leave them within the rounds.
_RFM_WINDOWS = {
    "rfm_segment": models_pb2.Model(rfm_mean_split=models_pb2.RfmMeanSplit(window_days=30)),
    "rfm_quintile_segment": models_pb2.Model(rfm_quintiles=models_pb2.RfmQuintiles(window_days=45)),
}
_SHORT_WINDOWS = {
    **_RFM_WINDOWS,
    "categories_bought": models_pb2.Model(categories_bought=models_pb2.CategoriesBought(window_days=20)),
}


def _definitions() -> list[DefinitionInput]:
    """The built-ins (scheduled here, some windows shortened) and the rules above."""
    specs = [
        dataclasses.replace(
            s, refresh_policy=catalog.Refresh.SCHEDULED, model=_SHORT_WINDOWS.get(s.dimension, s.model)
        )
        for s in builtins.definitions()
    ]
    return specs + _extra_dimensions(10)


class _World:
    """Draws the same random changes for both tenants from one seed."""

    def __init__(self, seed: int, start: dt.datetime) -> None:
        self.rng = random.Random(seed)
        self.start = start
        self.members: list[str] = []
        self.orders: list[tuple[str, str, dt.datetime]] = []  # (order, member, paid)
        self.refunded: set[str] = set()
        self.serial = 0

    def next_id(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}-{self.serial}"

    def member(self, now: dt.datetime) -> MemberInput:
        r = self.rng
        birthday = r.choice([dt.date(1992, 2, 29), dt.date(1988, 1, 1)]) if r.random() < 0.1 else (
            dt.date(1970, 1, 1) + dt.timedelta(days=r.randrange(13_000)))  # fmt: skip
        registered = now - dt.timedelta(days=r.uniform(0, 60) if r.random() < 0.5 else r.uniform(0, 500))
        member_id = self.next_id("m")
        self.members.append(member_id)
        return MemberInput(member_id, Profile(gender=1, birthday=birthday, register_time=registered))

    def round_changes(
        self, round_number: int, initial: list[Any], now: dt.datetime, previous: dt.datetime
    ) -> list[Any]:
        """What a round brings: the initial members first, once nothing (time alone moves values),
        once only a day's trade, once facts with history among them, else anything."""
        if round_number == 0:
            return initial
        if round_number == 5:
            return []
        return self.changes(now, previous, later_only=round_number == 6, facts_only=round_number == 7)

    def changes(
        self, now: dt.datetime, previous: dt.datetime, *, facts_only: bool = False, later_only: bool = False
    ) -> list[Any]:
        """Members, orders (some late: paid before the previous recompute), refunds and events;
        `facts_only`: only orders and events; `later_only`: those, each after the previous
        recompute (a day's trade)."""
        r = self.rng
        out: list[Any] = []
        facts_only |= later_only
        if r.random() < 0.5 and not facts_only:
            out.append(self.member(now))
        for member_id in r.sample(self.members, k=len(self.members) // 4):
            kind = r.random() * (0.9 if facts_only else 1.0)
            if facts_only and 0.45 <= kind < 0.55:
                continue
            if kind < 0.45:
                paid = max(self.start, now - dt.timedelta(days=r.choice([0.1, 1, 5, 40, 100]) * r.random()))
                if later_only:
                    paid = previous + (now - previous) * (0.01 + 0.98 * r.random())
                elif facts_only and r.random() < 0.5:  # history arriving: paid before the mark
                    paid = max(self.start, previous - dt.timedelta(days=r.uniform(0.1, 30)))
                elif r.random() < 0.1:  # a minute ahead: it enters the evaluation when paid
                    paid = now + dt.timedelta(minutes=1)
                lines = tuple(
                    OrderLine(
                        str(i),
                        sku=f"s{i}",
                        category=r.choice(CATEGORIES),
                        quantity=r.randint(1, 3),
                        unit_price_minor=r.choice([50, 120, 400]),
                    )
                    for i in range(r.randint(1, 2))
                )
                order_id = self.next_id("o")
                amount = sum(line.quantity * line.unit_price_minor for line in lines)
                out.append(OrderInput(order_id, member_id, paid, amount, lines))
                self.orders.append((order_id, member_id, paid))
            elif kind < 0.55 and self.orders:
                order_id, _, paid = r.choice(self.orders)
                if order_id not in self.refunded:
                    self.refunded.add(order_id)
                    when = max(paid, now - dt.timedelta(days=r.uniform(0, 2)))
                    out.append(RefundInput(self.next_id("r"), order_id, when, 0))
            elif kind < 0.9:
                # Now and then a minute ahead: it enters the evaluation when its time comes.
                ahead = r.random() < 0.1
                out.append(
                    [
                        BehaviorEvent(
                            self.next_id("e"),
                            member_id,
                            r.choice([2, 3, 5]),
                            now + dt.timedelta(minutes=1)
                            if ahead
                            else previous + (now - previous) * r.uniform(0.01, 0.99)
                            if later_only
                            else now - dt.timedelta(days=r.uniform(0, 20)),
                            category=r.choice(CATEGORIES),
                        )
                        for _ in range(r.randint(1, 3))
                    ]
                )
            else:
                born = dt.date(1975, 1, 1) + dt.timedelta(days=r.randrange(9000))
                out.append(MemberInput(member_id, Profile(gender=2, birthday=born, register_time=self.start)))
        return out


async def _new_versions(tag_catalog: Catalog, tenants: list[str], round_number: int) -> None:
    """New definition versions in some rounds: every member is evaluated again."""
    if round_number in (3, 6):
        for tenant in tenants:
            current = await tag_catalog.get(tenant, "rc_order_recency", 0)
            version = _extra_dimensions(20) if round_number == 3 else _extra_dimensions(20, "_v3")
            await tag_catalog.update(tenant, version[0], current.version)
    if round_number == 3:  # an RFM window changed: its figures evaluated again for everyone
        longer = models_pb2.Model(rfm_mean_split=models_pb2.RfmMeanSplit(window_days=40))
        spec = next(s for s in _definitions() if s.dimension == "rfm_segment")
        for tenant in tenants:
            current = await tag_catalog.get(tenant, "rfm_segment", 0)
            await tag_catalog.update(tenant, dataclasses.replace(spec, model=longer), current.version)


async def _apply(members: Members, facts: Facts, tenant: str, changes: list[Any], now: dt.datetime) -> None:
    for change in changes:
        if isinstance(change, MemberInput):
            await members.upsert(tenant, change, now)
        elif isinstance(change, OrderInput):
            await facts.record_order(tenant, change, now)
        elif isinstance(change, RefundInput):
            await facts.record_refund(tenant, change, now)
        else:
            await facts.record_events(tenant, change, now)


async def _state(db: Database, tenant: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every tag row (history included) and every tag-change feed entry, in a stable order."""
    async with db.transaction(tenant, readonly=True) as conn:
        tags = await conn.fetch(
            """SELECT member_id, dimension, value, definition_version, valid_from, valid_to
               FROM tagging.member_tags ORDER BY 1, 2, 5, 3"""
        )
        entries = await conn.fetch(
            """SELECT member_id, payload->>'dimension' AS dimension, payload->>'value' AS value,
                      payload->>'change' AS change, payload->>'occur_time' AS occur_time
               FROM tagging.feed WHERE kind = 5 ORDER BY 1, 2, 5, 3, 4"""
        )
    return [tuple(row) for row in tags], [tuple(row) for row in entries]


async def _current(conn: Any) -> list[tuple[DefinitionInput, int]]:
    """Every active definition at its current version."""
    found = []
    for row in await definition_store.active_definition_versions(conn):
        definition = await definition_store.get_definition(conn, row["dimension"], row["current_version"])
        assert definition is not None
        found.append((catalog.from_body(definition[0]["body"]), row["current_version"]))
    return found


async def _held_is_then(db: Database, tenant: str) -> int:
    """Where the recompute takes what a scheduled dimension's members held at its previous as_of
    from the tags they hold (every fact since is an order or event that happened later), that is
    what the rules give at that as_of: the members and values are compared. Returns how many
    dimensions were compared."""
    compared = 0
    async with db.transaction(tenant, readonly=True) as conn:
        for spec, version in await _current(conn):
            if spec.kind not in catalog.EVALUATED_KINDS:
                continue
            compiled = catalog.compile_definition(spec, filtered=True)
            inputs = [i.value for i in compiled.inputs]
            unseen = await member_tag_store.unseen_since_mark(conn, spec.dimension, inputs)
            if not (unseen.as_of and unseen.fact_times and held_is_then(unseen, spec, version)):
                continue
            members = sorted(unseen.fact_times)
            held = await member_tag_store.held_values(
                conn, spec.dimension, members, exclusive=spec.cardinality == catalog.Cardinality.SINGLE
            )
            then = await member_tag_store.values_at(conn, compiled, unseen.as_of, members)
            assert sorted(held) == sorted(then), spec.dimension
            compared += 1
    return compared


async def _rank_as_the_facts_do(db: Database, tenant: str, now: dt.datetime) -> int:
    """The RFM models' kept figures, and the tags ranked from them, are those the models give from
    every order at `now` (the statement ExplainTags runs). Returns how many were compared."""
    compared = 0
    async with db.transaction(tenant, readonly=True) as conn:
        for spec, _ in await _current(conn):
            kept = catalog.kept_figures(spec)
            if kept is None:
                continue
            # The figures kept (some moved by the orders that entered or left the window since the
            # previous recompute, not evaluated) are those of every order now.
            fresh = await conn.fetch(kept.sql, *kept.args(now, None))
            stored = await conn.fetch(
                """SELECT member_id, last_paid, frequency, monetary FROM tagging.rfm_figures
                   WHERE dimension = $1""",
                spec.dimension,
            )
            assert sorted(map(tuple, stored)) == sorted(map(tuple, fresh)), spec.dimension
            compiled = catalog.compile_definition(spec, filtered=False)
            computed = await conn.fetch(compiled.sql, *compiled.args(now))
            from_facts = sorted((r["member_id"], v) for r in computed for v in r["tag_values"])
            held = await conn.fetch(
                "SELECT member_id, value FROM tagging.member_tags WHERE dimension = $1 AND valid_to IS NULL",
                spec.dimension,
            )
            assert sorted((r["member_id"], r["value"]) for r in held) == from_facts, spec.dimension
            compared += 1
    return compared


def _summary(results: list[RecomputeResult]) -> dict[str, tuple[int, int, int]]:
    return {r.dimension: (r.definition_version, r.added, r.removed) for r in results}


async def test_incremental_recompute_equals_a_full_one_over_random_facts_and_time(db: Database) -> None:
    incremental_tenant, full_tenant = unique("rcinc"), unique("rcfull")
    # Every share of members may go incrementally here: a few dozen members are all "many".
    incremental, full = Tagger(db, incremental_share=1.0), Tagger(db)
    tenants = {incremental_tenant: incremental, full_tenant: full}
    tenant_writers = {t: writers(db, tagger) for t, tagger in tenants.items()}
    tag_catalog = Catalog(db)
    for tenant in tenants:
        await tag_catalog.seed(tenant, _definitions())
    # Fixed, so every run draws the same; before the wall clock, as the feed entries of member
    # changes are dated by their commit.
    now = dt.datetime(2021, 3, 1, 9, tzinfo=dt.UTC)
    world = _World(seed=25, start=now)
    initial = [world.member(now) for _ in range(MEMBERS)]
    # Thirtieth birthdays spread over the first rounds: an age moves them with no fact.
    for days in (2, 5, 11, 17, 26, 40, 61, 90):
        born = (now + dt.timedelta(days=days)).date().replace(year=now.year - 30)
        initial.append(MemberInput(world.next_id("b"), Profile(birthday=born, register_time=now)))
        world.members.append(initial[-1].member_id)
    time_only_changes = 0
    held_compared = 0
    evaluated_fewer = ranked_fewer = False
    previous = now
    for round_number in range(ROUNDS):
        changes = world.round_changes(round_number, initial, now, previous)
        await _new_versions(tag_catalog, list(tenants), round_number)
        for tenant, (members, facts) in tenant_writers.items():
            await _apply(members, facts, tenant, changes, now)
        held_compared += await _held_is_then(db, incremental_tenant)
        results = await incremental.recompute(incremental_tenant, [], now)
        got = _summary(results)
        assert got == _summary(await full.recompute(full_tenant, [], now, full=True)), f"round {round_number}"
        assert await _state(db, incremental_tenant) == await _state(db, full_tenant), f"round {round_number}"
        evaluated_fewer |= any(r.incremental and 0 < r.evaluated < len(world.members) for r in results)
        ranked_fewer |= any(
            r.incremental and 0 < r.evaluated < len(world.members) and r.dimension.startswith("rfm_")
            for r in results
        )
        assert await _rank_as_the_facts_do(db, incremental_tenant, now) == 2
        for tenant, tagger in tenants.items():
            again = await tagger.recompute(tenant, [], now, full=tagger is full)
            assert all(r.added == r.removed == 0 for r in again), "a second recompute changes nothing"
        if not changes:
            time_only_changes = sum(a + r for _, a, r in got.values())
        previous = now
        # Into the round without facts: far enough for windows to empty.
        now += STEPS[-2] if round_number == 4 else world.rng.choice(STEPS)
    assert evaluated_fewer, "some recompute evaluated only some members"
    assert ranked_fewer, "an RFM model evaluated the figures of only some members"
    assert held_compared >= 5, "the values held stood for those at the previous as_of"
    assert time_only_changes > 0, "time alone changed tags, and the incremental recompute found them"


async def test_real_time_dimensions_evaluate_the_previous_as_of(db: Database) -> None:
    """A real-time dimension's values move with each fact's refresh between recomputes, so what its
    members hold is not what they held at the previous recompute: only scheduled dimensions take it."""
    tenant = unique("rcheld")
    tagger = Tagger(db)
    members, facts = writers(db, tagger)
    await Catalog(db).seed(tenant, builtins.definitions())
    now = dt.datetime(2021, 3, 1, 9, tzinfo=dt.UTC)
    ids = [f"m-{i}" for i in range(6)]
    for i, member_id in enumerate(ids):
        registered = now - dt.timedelta(days=400)
        await members.upsert(tenant, MemberInput(member_id, Profile(gender=1, register_time=registered)), now)
        line = OrderLine("1", sku="s", category="a", quantity=1, unit_price_minor=500)
        paid = now - dt.timedelta(days=200 + i)
        await facts.record_order(tenant, OrderInput(f"o-old-{member_id}", member_id, paid, 500, (line,)), now)
    await tagger.recompute(tenant, [], now)
    later = now + dt.timedelta(days=1)
    for member_id in ids:  # a day's orders, refreshed as they arrive: lifecycle turns active
        line = OrderLine("1", sku="s", category="b", quantity=2, unit_price_minor=900)
        paid = now + dt.timedelta(hours=6)
        await facts.record_order(
            tenant, OrderInput(f"o-new-{member_id}", member_id, paid, 1800, (line,)), later
        )
    async with db.transaction(tenant, plans="custom") as conn:
        await tagger.refresh_owed(conn, tenant, dict.fromkeys(ids, INPUT_BITS[Input.ORDERS]), later)
    # The scheduled built-ins (RFM, preferences, ...) compared; lifecycle and the other real-time
    # ones would differ: the assertion inside names the dimension.
    assert await _held_is_then(db, tenant) >= 3


async def _marks(conn: Any) -> dict[str, int | None]:
    rows = await conn.fetch("SELECT dimension, definition_version FROM tagging.recompute_marks")
    return {row["dimension"]: row["definition_version"] for row in rows}


def _migration_block(name: str, containing: str) -> str:
    """The paragraph of a tagging migration that contains `containing`."""
    text = Path(str(tagging_server.DEFINITION.migrations_dir), name).read_text()
    return next(block for block in text.split("\n\n") if containing in block)


async def test_rfm_marks_left_before_figures_were_kept_rank_everyone_again(db: Database) -> None:
    """Migration 0029 finds RFM dimensions recomputed when no figures were kept: their next
    recompute evaluates everyone's figures rather than ranking an empty table."""
    tenant = unique("rcmig")
    tagger = Tagger(db)
    members, facts = writers(db, tagger)
    await Catalog(db).seed(tenant, _definitions())
    now = dt.datetime(2021, 3, 1, 9, tzinfo=dt.UTC)
    for i in range(4):
        member_id = f"m-{i}"
        await members.upsert(tenant, MemberInput(member_id, Profile(gender=1, register_time=now)), now)
        line = OrderLine("1", sku="s", category="a", quantity=1 + i, unit_price_minor=500)
        paid = now - dt.timedelta(days=3 * i)
        order = OrderInput(f"o-{member_id}", member_id, paid, 500 * (1 + i), (line,))
        await facts.record_order(tenant, order, now)
    await tagger.recompute(tenant, [], now)
    # What a recompute before the migration left: marks, no figures.
    update = _migration_block("0029_rfm_figures.sql", "UPDATE recompute_marks")
    async with db.transaction(tenant) as conn:
        await conn.execute("DELETE FROM tagging.rfm_figures")
        marks = await _marks(conn)
        await conn.execute("SET LOCAL search_path = tagging")
        await conn.execute(update)
        after = await _marks(conn)
    assert after == {d: None if d in _RFM_WINDOWS else v for d, v in marks.items()}
    later = now + dt.timedelta(days=1)
    results = await tagger.recompute(tenant, [], later)
    assert {r.dimension for r in results if not r.incremental} >= set(_RFM_WINDOWS)
    assert await _rank_as_the_facts_do(db, tenant, later) == 2
