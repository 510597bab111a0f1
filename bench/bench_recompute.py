"""Full recompute of every active evaluated dimension through RecomputeTags, on generated data.

The data is the cached generated dataset (MEMBEROPS_BENCH_MEMBERS members, default 1,000,000, with
about 10 orders and 20 events each; see bench/dataset.py). Tags, feed and catalog are emptied
before the tagging service starts, so it seeds the current built-in catalog and the first
recompute starts from no tags. The service's clock stands at dataset.NOW.

Reported: the first recompute (writes every tag), a second one on unchanged data (steady state:
must write nothing), and by default each dimension's steady-state recompute on its own
(BENCH_RECOMPUTE_EACH=0 skips that). The baseline is one plain scan, `count(*)` over orders, order
lines and events with index scans off: how fast this machine reads the facts a recompute reads.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import asyncpg
import grpc
from memberops.tagging.v1 import (
    facts_pb2,
    rules_pb2,
    tagging_service_pb2,
    tagging_service_pb2_grpc,
    tags_pb2,
)

from bench import dataset, servers

EVALUATED_KINDS = (tags_pb2.TAG_KIND_FACT, tags_pb2.TAG_KIND_RULE, tags_pb2.TAG_KIND_MODEL)
DEADLINE = 3 * 3600
SCAN = """SELECT (SELECT count(*) FROM tagging.orders) + (SELECT count(*) FROM tagging.order_lines)
                 + (SELECT count(*) FROM tagging.events)"""
SCAN_ROUNDS = 3


Fn = rules_pb2.AggregateFunction
Op = rules_pb2.Operator


def _rule(operand: rules_pb2.Operand, op: rules_pb2.Operator.ValueType, *numbers: float) -> rules_pb2.Rule:
    values = [rules_pb2.Value(number=n) for n in numbers]
    return rules_pb2.Rule(condition=rules_pb2.Condition(operand=operand, operator=op, values=values))


def _aggregate(
    function: rules_pb2.AggregateFunction.ValueType,
    window_days: int,
    kinds: tuple[facts_pb2.EventKind.ValueType, ...] = (),
) -> rules_pb2.Operand:
    return rules_pb2.Operand(
        aggregate=rules_pb2.Aggregate(
            function=function, window_days=window_days, filter=rules_pb2.FactFilter(event_kinds=kinds)
        )
    )


def _dimension(name: str, values: list[tuple[str, rules_pb2.Rule]]) -> tags_pb2.TagDefinition:
    return tags_pb2.TagDefinition(
        dimension=name,
        category=tags_pb2.TAG_CATEGORY_TRANSACTION,
        kind=tags_pb2.TAG_KIND_RULE,
        refresh_policy=tags_pb2.REFRESH_POLICY_SCHEDULED,
        cardinality=tags_pb2.CARDINALITY_SINGLE,
        values=[tags_pb2.TagValue(value=value, rule=rule) for value, rule in values],
    )


def fallback_definitions() -> list[tags_pb2.TagDefinition]:
    """Four RULE dimensions, used only when the tenant has no evaluated dimension at all."""
    age = rules_pb2.Operand(field=rules_pb2.PROFILE_FIELD_AGE)
    per_month = _aggregate(Fn.AGGREGATE_FUNCTION_ORDERS_PER_MONTH, 90)
    average = _aggregate(Fn.AGGREGATE_FUNCTION_ORDER_AMOUNT_AVG, 365)
    events = _aggregate(Fn.AGGREGATE_FUNCTION_EVENT_COUNT, 30)
    carts = _aggregate(Fn.AGGREGATE_FUNCTION_EVENT_COUNT, 30, (facts_pb2.EVENT_KIND_CART,))
    bands = (("18-25", 18, 25), ("26-35", 26, 35), ("36-45", 36, 45), ("46+", 46, 200))
    return [
        _dimension("bench_age_band", [(n, _rule(age, Op.OPERATOR_BETWEEN, lo, hi)) for n, lo, hi in bands]),
        _dimension(
            "bench_purchase_frequency",
            [
                ("6_plus", _rule(per_month, Op.OPERATOR_GE, 6)),
                ("2_5", _rule(per_month, Op.OPERATOR_GE, 2)),
                ("under_2", _rule(_aggregate(Fn.AGGREGATE_FUNCTION_ORDER_COUNT, 90), Op.OPERATOR_GE, 1)),
            ],
        ),
        _dimension(
            "bench_average_order",
            [
                ("lt_100", _rule(average, Op.OPERATOR_LT, 10000)),
                ("100_500", _rule(average, Op.OPERATOR_LT, 50000)),
                ("500_plus", _rule(average, Op.OPERATOR_IS_SET)),
            ],
        ),
        _dimension(
            "bench_engagement",
            [
                ("high", _rule(events, Op.OPERATOR_GE, 10)),
                ("carted", _rule(carts, Op.OPERATOR_GE, 1)),
                ("some", _rule(events, Op.OPERATOR_GE, 1)),
            ],
        ),
    ]


async def evaluated_dimensions(stub: Any) -> list[tags_pb2.TagDefinition]:
    found: list[tags_pb2.TagDefinition] = []
    token = ""
    while True:
        page = await stub.ListTagDefinitions(
            tagging_service_pb2.ListTagDefinitionsRequest(page_size=1000, page_token=token),
            metadata=servers.AUTH,
        )
        found += [d for d in page.tag_definitions if d.kind in EVALUATED_KINDS]
        token = page.next_page_token
        if not token:
            return found


async def scan_seconds(dsn: str) -> list[float]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "SET enable_indexscan = off; SET enable_indexonlyscan = off; SET enable_bitmapscan = off"
        )
        times = []
        for _ in range(SCAN_ROUNDS + 1):  # the first warms the cache
            started = time.perf_counter()
            await conn.fetchval(SCAN)
            times.append(time.perf_counter() - started)
        return times
    finally:
        await conn.close()


async def recompute(stub: Any, dimensions: list[str]) -> tuple[float, list[tags_pb2.RecomputeResult]]:
    started = time.perf_counter()
    reply = await stub.RecomputeTags(
        tagging_service_pb2.RecomputeTagsRequest(dimensions=dimensions),
        metadata=servers.AUTH,
        timeout=DEADLINE,
    )
    return time.perf_counter() - started, list(reply.results)


def print_run(name: str, seconds: float, results: list[tags_pb2.RecomputeResult], baseline: float) -> None:
    added = sum(r.added_count for r in results)
    removed = sum(r.removed_count for r in results)
    print(
        f"{name:<22} {seconds:8.1f} s  {len(results)} dimensions, +{added:,} -{removed:,} tag changes  "
        f"({seconds / baseline:.1f}x the scan)"
    )
    for r in results:
        print(
            f"    {r.dimension:<28} v{r.definition_version}  +{r.added_count:>10,}  -{r.removed_count:>10,}"
        )


async def main() -> None:
    members = dataset.members_from_env()
    each = os.environ.get("BENCH_RECOMPUTE_EACH", "1") != "0"
    async with dataset.cached(members) as (dsn, generated):
        print(f"data: {generated.line()} (cached in {dataset.cache_dir(members)})")
        await dataset.reset_tags(dsn)
        settings = await dataset.pg_settings(dsn)
        print("postgres: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
        async with (
            servers.service("tagging", dsn, clock=f"frozen:{dataset.NOW.isoformat()}") as address,
            grpc.aio.insecure_channel(address) as channel,
        ):
            stub: Any = tagging_service_pb2_grpc.TaggingServiceStub(channel)
            definitions = await evaluated_dimensions(stub)
            if not definitions:
                print("note: the tenant has no active FACT/RULE/MODEL dimensions (built-ins not seeded?):")
                print("      recomputing 4 RULE dimensions made by this bench instead")
                for spec in fallback_definitions():
                    await stub.CreateTagDefinition(
                        tagging_service_pb2.CreateTagDefinitionRequest(tag_definition=spec),
                        metadata=servers.AUTH,
                    )
                definitions = await evaluated_dimensions(stub)
            print(
                f"dimensions: {len(definitions)} active evaluated: "
                + ", ".join(
                    f"{d.dimension} ({tags_pb2.TagKind.Name(d.kind)[9:].lower()})" for d in definitions
                )
            )
            scans = await scan_seconds(dsn)
            baseline = statistics.median(scans[1:])
            first_seconds, first = await recompute(stub, [])
            # Production's autovacuum would analyze the new tags within a minute; do it now so the
            # steady-state run does not depend on when autovacuum happens to wake.
            await dataset.execute(dsn, "ANALYZE tagging.member_tags")
            second_seconds, second = await recompute(stub, [])
            separately: list[tuple[str, float, int]] = []
            if each:
                for result in second:
                    seconds, results = await recompute(stub, [result.dimension])
                    changes = sum(r.added_count + r.removed_count for r in results)
                    separately.append((result.dimension, seconds, changes))
            tag_rows = await dataset.fetchval(
                dsn, "SELECT count(*) FROM tagging.member_tags WHERE valid_to IS NULL"
            )
    print(
        f"{'scan (baseline)':<22} {baseline:8.1f} s  count(*) over orders + order_lines + events, "
        f"median of {SCAN_ROUNDS} after one to warm the cache ({scans[0]:.1f} s)"
    )
    print_run("recompute (from empty)", first_seconds, first, baseline)
    print_run("recompute (unchanged)", second_seconds, second, baseline)
    if separately:
        print("steady state, one dimension per call:")
        for dimension, seconds, changes in sorted(separately, key=lambda s: -s[1]):
            print(f"    {dimension:<28} {seconds:8.2f} s" + (f"  ({changes} changes!)" if changes else ""))
        print(f"    {'sum':<28} {sum(s for _, s, _ in separately):8.2f} s")
    print(f"current tags held: {tag_rows:,}")
    print(
        f"ratio recompute/scan  from empty {first_seconds / baseline:.1f}x  "
        f"unchanged {second_seconds / baseline:.1f}x"
    )
    print(
        f"target (issue 3): full recompute <= 60 s on 1M members; measured {first_seconds:.0f} s "
        f"from empty, {second_seconds:.0f} s unchanged ({members:,} members)"
    )
    changed = sum(r.added_count + r.removed_count for r in second) + sum(c for _, _, c in separately)
    if changed:
        raise SystemExit(f"UNEXPECTED: recomputing unchanged data changed {changed} tags (expected none)")
