"""History through ImportOrders, against raw COPY of the same rows; and a CDNOW-sized shop end to end.

- `cdnow`: a new shop's history the size of the public CDNOW data (23,570 customers, 69,659
  orders): ImportMembers, then ImportOrders, each order with one line, tags refreshed; seconds from
  the first member sent to the last order's reply (target: 10 s).
- `import_orders`: BENCH_ORDERS generated orders of 1-3 lines over BENCH_ORDER_MEMBERS members in
  batches of 10,000, each stored with its lines, feed entry and the members' real-time tags
  refreshed before the reply; then the same stream again (all unchanged). Baseline: COPY of the same
  orders and lines, in the same batches, into tables like tagging.orders and tagging.order_lines
  (their keys and indexes; no foreign keys, triggers, feed or tags): what PostgreSQL takes at best.
  Besides the wall-time ratio, the CPU seconds per 10,000 orders of each (CpuMeter), which other
  work on a shared machine moves much less.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from google.protobuf import timestamp_pb2
from memberops.tagging.v1 import facts_pb2, member_pb2, tagging_service_pb2, tagging_service_pb2_grpc

from bench import servers

BATCH = 10_000
MEMBER_BATCH = 5_000
ROUNDS = 3
CDNOW_MEMBERS = 23_570
CDNOW_ORDERS = 69_659
CATEGORIES = ["skincare", "makeup", "fragrance", "haircare", "tools", "bath", "men", "baby"]
STORES = ["tmall", "jd", "app", "store"]
START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
SPAN_SECONDS = 700 * 86_400


def stamp(moment: dt.datetime) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(moment)
    return value


def generate_orders(
    prefix: str, members: Sequence[str], count: int, seed: int, max_lines: int = 3
) -> list[facts_pb2.Order]:
    rng = random.Random(seed)
    orders = []
    for n in range(count):
        lines = [
            facts_pb2.OrderLine(
                line_id=str(i),
                sku=f"sku-{rng.randrange(5000)}",
                category=rng.choice(CATEGORIES),
                brand=f"brand-{rng.randrange(50)}",
                quantity=1 + rng.randrange(3),
                unit_price_minor=100 * (10 + rng.randrange(500)),
            )
            for i in range(1 + rng.randrange(max_lines))
        ]
        orders.append(
            facts_pb2.Order(
                order_id=f"{prefix}-{n:08d}",
                member_id=members[rng.randrange(len(members))],
                paid_time=stamp(START + dt.timedelta(seconds=rng.randrange(SPAN_SECONDS))),
                amount_minor=sum(line.quantity * line.unit_price_minor for line in lines),
                store=rng.choice(STORES),
                payment_method="alipay",
                lines=lines,
            )
        )
    return orders


async def _batches(messages: Sequence[Any], size: int, wrap: Any) -> AsyncIterator[Any]:
    for i in range(0, len(messages), size):
        yield wrap(messages[i : i + size])


async def import_members(stub: Any, ids: Sequence[str]) -> None:
    members = [member_pb2.Member(member_id=m) for m in ids]
    reply = await stub.ImportMembers(
        _batches(members, MEMBER_BATCH, lambda b: tagging_service_pb2.ImportMembersRequest(members=b)),
        metadata=servers.AUTH,
    )
    if reply.received_count != len(ids):
        raise RuntimeError(f"members: received {reply.received_count}")


async def import_orders(stub: Any, orders: Sequence[facts_pb2.Order], expect_stored: int) -> float:
    """One ImportOrders stream of BATCH-sized messages; returns its seconds."""
    started = time.perf_counter()
    reply = await stub.ImportOrders(
        _batches(orders, BATCH, lambda b: tagging_service_pb2.ImportOrdersRequest(orders=b)),
        metadata=servers.AUTH,
    )
    seconds = time.perf_counter() - started
    if (reply.received_count, reply.stored_count) != (len(orders), expect_stored):
        raise RuntimeError(f"received {reply.received_count}, stored {reply.stored_count}")
    return seconds


async def through_copy(dsn: str, orders: Sequence[facts_pb2.Order]) -> float:
    """COPY of the same orders and lines, in the same batches, into tables like tagging's."""
    order_rows: list[tuple[Any, ...]] = []
    line_rows: list[tuple[Any, ...]] = []
    for o in orders:
        paid = o.paid_time.ToDatetime(dt.UTC)
        order_rows.append(
            (
                servers.BENCH_TENANT,
                o.order_id,
                o.member_id,
                paid,
                o.amount_minor,
                o.store,
                o.payment_method,
                "",
            )
        )
        line_rows.extend(
            (
                servers.BENCH_TENANT,
                o.order_id,
                line.line_id,
                o.member_id,
                paid,
                line.sku,
                line.category,
                line.brand,
                line.quantity,
                line.unit_price_minor,
            )
            for line in o.lines
        )
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS public.bench_orders (LIKE tagging.orders INCLUDING ALL);
               CREATE TABLE IF NOT EXISTS public.bench_order_lines (LIKE tagging.order_lines INCLUDING ALL);
               TRUNCATE public.bench_orders, public.bench_order_lines"""
        )
        order_columns = [
            "tenant_id",
            "order_id",
            "member_id",
            "paid_time",
            "amount_minor",
            "store",
            "payment_method",
            "content_hash",
        ]
        line_columns = [
            "tenant_id",
            "order_id",
            "line_id",
            "member_id",
            "paid_time",
            "sku",
            "category",
            "brand",
            "quantity",
            "unit_price_minor",
        ]
        started = time.perf_counter()
        line_at = 0
        for i in range(0, len(order_rows), BATCH):
            batch = order_rows[i : i + BATCH]
            lines = sum(len(o.lines) for o in orders[i : i + BATCH])
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "bench_orders", schema_name="public", records=batch, columns=order_columns
                )
                await conn.copy_records_to_table(
                    "bench_order_lines",
                    schema_name="public",
                    records=line_rows[line_at : line_at + lines],
                    columns=line_columns,
                )
            line_at += lines
        return time.perf_counter() - started
    finally:
        await conn.close()


def _cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """User and system CPU seconds of a live process (with `reaped`, of its waited-for children too)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if reaped else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if _parent(int(entry.name)) == parent:
                    found.append(int(entry.name))
            except (OSError, ValueError):
                continue
    return found


class CpuMeter:
    """CPU seconds spent by this process, the service's and the PostgreSQL cluster's (the
    postmaster, its live backends and those that ended): a figure other work on the machine moves
    much less than wall time, to compare the import with raw COPY on a busy box."""

    def __init__(self, postmaster: int) -> None:
        self._postmaster = postmaster
        self._service = [pid for pid in _children(os.getpid()) if b"services.tagging.server" in _cmdline(pid)]

    def read(self) -> float:
        own = sum(os.times()[:2])
        cluster = _cpu_seconds(self._postmaster, reaped=True)
        for pid in _children(self._postmaster):
            try:
                cluster += _cpu_seconds(pid)
            except (OSError, ValueError):
                continue
        return own + cluster + sum(_cpu_seconds(pid) for pid in self._service)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


async def postmaster_pid(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return _parent(await conn.fetchval("SELECT pg_backend_pid()"))
    finally:
        await conn.close()


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


async def cdnow(stub: Any) -> float:
    """A CDNOW-sized history, end to end: members, then orders (one line each), tags refreshed."""
    ids = [f"cd-{i:06d}" for i in range(CDNOW_MEMBERS)]
    orders = generate_orders("cd-o", ids, CDNOW_ORDERS, seed=99, max_lines=1)
    started = time.perf_counter()
    await import_members(stub, ids)
    await import_orders(stub, orders, expect_stored=len(orders))
    return time.perf_counter() - started


async def main() -> None:
    count = int(os.environ.get("BENCH_ORDERS", "200000"))
    member_count = int(os.environ.get("BENCH_ORDER_MEMBERS", "50000"))
    rates: dict[str, list[float]] = {"import": [], "resend": [], "copy": []}
    # CPU seconds per order of the import and of raw COPY, each round.
    cpu: dict[str, list[float]] = {"import": [], "copy": []}
    async with (
        servers.postgres() as dsn,
        servers.service("tagging", dsn) as address,
        grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel,
    ):
        stub: Any = tagging_service_pb2_grpc.TaggingServiceStub(channel)
        meter = CpuMeter(await postmaster_pid(dsn))
        cdnow_seconds = await cdnow(stub)
        members = [f"bo-{i:07d}" for i in range(member_count)]
        await import_members(stub, members)
        for round_no in range(ROUNDS):
            orders = generate_orders(f"r{round_no}", members, count, seed=round_no + 1)
            spent = meter.read()
            rates["import"].append(count / await import_orders(stub, orders, expect_stored=count))
            cpu["import"].append((meter.read() - spent) / count)
            rates["resend"].append(count / await import_orders(stub, orders, expect_stored=0))
            spent = meter.read()
            rates["copy"].append(count / await through_copy(dsn, orders))
            cpu["copy"].append((meter.read() - spent) / count)
    imported, resent, copied = (median(rates[k]) for k in ("import", "resend", "copy"))
    print(
        f"cdnow           {CDNOW_MEMBERS} members + {CDNOW_ORDERS} orders  {cdnow_seconds:6.2f} s end to end"
    )
    print(f"import_orders   batch={BATCH}     {imported:9.0f} orders/s  ({count} orders, ~2 lines each)")
    print(f"import_resend   (all unchanged)     {resent:9.0f} orders/s")
    print(f"raw_copy        (baseline)          {copied:9.0f} orders/s")
    print(f"ratio import_orders/raw_copy  {imported / copied:.2f}x")
    print(f"ratio import_resend/raw_copy  {resent / copied:.2f}x")
    print(
        f"rounds: import {[round(r) for r in rates['import']]}, resend {[round(r) for r in rates['resend']]}"
    )
    import_cpu, copy_cpu = median(cpu["import"]), median(cpu["copy"])
    print(
        f"cpu per 10k orders: import {import_cpu * 1e4:.2f} s, raw_copy {copy_cpu * 1e4:.2f} s"
        f"  ratio raw_copy/import {copy_cpu / import_cpu:.2f}x  (load {os.getloadavg()[0]:.1f})"
    )
