"""Tagging's published read-only views: the one contract audiences read, tenant-isolated and read-only."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest

from runtime.db import Database
from services.audience import compiler
from tests.audience.helpers import (
    CART,
    Match,
    all_of,
    amount_sum,
    any_of,
    event_count,
    fact,
    in_batch,
    member,
    member_of,
    not_,
    now,
    order,
    order_count,
    tag,
)
from tests.conftest import GLOBEX, TENANT_ACME, TENANT_GLOBEX, unique
from tests.tagging.facts_helpers import a_refund, record_refund, stamp
from tests.tagging.rule_builders import Field, Fn, Op, agg, field

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as TaggingStub

VIEWS = (
    "members",
    "orders",
    "order_lines",
    "events",
    "current_member_tags",
    "tag_dimensions",
    "feed",
    "feed_positions",
    "feed_sequencer",
    "event_recency",
    "purchase_recency",
)
# Any table of the tagging schema (`tagging_read.*` and the module `services.tagging.rules` are fine).
TAGGING_TABLE = re.compile(
    r"\btagging\.(members|orders|order_lines|refunds|refund_lines|events|feed|member_tags|tag_definitions"
    r"|tag_definition_versions|refresh_queue|event_recency|purchase_recency)\b"
)


async def test_the_views_are_security_invoker_and_read_only(db: Database) -> None:
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        rows = await conn.fetch(
            """SELECT c.relname, c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'tagging_read' AND c.relkind = 'v' ORDER BY c.relname"""
        )
    assert sorted(row["relname"] for row in rows) == sorted(VIEWS)
    assert all("security_invoker=true" in (row["reloptions"] or []) for row in rows)
    async with db.transaction(TENANT_ACME) as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(
                "INSERT INTO tagging_read.members (tenant_id, member_id) VALUES ($1, $2)",
                TENANT_ACME,
                unique(),
            )


async def test_row_level_security_holds_through_the_views(tagging_stub: TaggingStub, db: Database) -> None:
    batch = unique("batch")
    globex = await member(tagging_stub, batch, metadata=GLOBEX)
    await order(tagging_stub, globex, 1, [("shoes", 1_000)], metadata=GLOBEX)
    for tenant, expected in ((TENANT_ACME, 0), (TENANT_GLOBEX, 1)):
        async with db.transaction(tenant, readonly=True) as conn:
            for view in ("members", "orders", "order_lines"):
                seen = await conn.fetchval(
                    f"SELECT count(*) FROM tagging_read.{view} WHERE member_id = $1", globex
                )
                assert seen == expected, (tenant, view)


async def test_orders_are_published_net_of_refunds(tagging_stub: TaggingStub, db: Database) -> None:
    member_id = await member(tagging_stub, unique("batch"))
    await order(tagging_stub, member_id, 3, [("shoes", 6_000), ("hats", 4_000)])
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        order_id = await conn.fetchval(
            "SELECT order_id FROM tagging_read.orders WHERE member_id = $1", member_id
        )
    await record_refund(
        tagging_stub, a_refund(order_id, amount_minor=4_000, refund_time=stamp(now() - dt.timedelta(days=1)))
    )
    async with db.transaction(TENANT_ACME, readonly=True) as conn:
        row = await conn.fetchrow(
            "SELECT amount_minor, net_amount_minor FROM tagging_read.orders WHERE order_id = $1", order_id
        )
    assert row is not None
    assert (row["amount_minor"], row["net_amount_minor"]) == (10_000, 6_000)


def test_compiled_sql_reads_only_the_published_views() -> None:
    rule = all_of(
        in_batch("b"),
        tag("loyalty", Match.TAG_MATCH_ANY_OF, "loyal"),
        not_(tag("lifecycle", Match.TAG_MATCH_HAS_ANY_VALUE)),
        any_of(
            fact(amount_sum(30, categories=["a"]), Op.OPERATOR_GE, 1),
            fact(order_count(90), Op.OPERATOR_GE, 2),
            fact(agg(Fn.AGGREGATE_FUNCTION_ITEM_COUNT, 30), Op.OPERATOR_GE, 2),
            fact(event_count(14, event_kinds=[CART]), Op.OPERATOR_GE, 1),
            fact(field(Field.PROFILE_FIELD_CITY_TIER), Op.OPERATOR_EQ, "CITY_TIER_1"),
        ),
        member_of("other"),
    )
    for filtered in (False, True):
        compiled = compiler.compile_audience(rule, {"other": in_batch("c")}, filtered=filtered)
        for sql in (compiled.members_sql(), compiled.check_sql()):
            assert "tagging_read." in sql
            assert TAGGING_TABLE.findall(sql) == []
            assert "'b'" not in sql  # caller values are bound parameters
        if filtered:
            # CheckMembership: the members and every aggregate's rows are restricted to the one member.
            check = compiled.check_sql()
            assert check.count(f"member_id = ANY({compiled.member_filter})") == 1 + check.count("LEFT JOIN (")


def test_the_audience_service_names_no_tagging_table() -> None:
    root = Path(__file__).resolve().parents[2] / "services" / "audience"
    for path in root.rglob("*"):
        if path.suffix in (".py", ".sql"):
            assert TAGGING_TABLE.findall(path.read_text()) == [], path
