"""Fact imports (ImportOrders, ImportRefunds, ImportEvents): history loaded in batches.

Each batch is validated row by row with RecordOrder's, RecordRefund's and RecordEvents' own rules
(errors name `requests[k].orders[i].field`), stored in one transaction with COPY and set-based
statements (import_store), and idempotent by natural key: a fact stored before with the same
content is unchanged, with other content ALREADY_EXISTS. A re-sent order is recognised before
it is converted, by the digest of its wire form stored when it was imported (`wire_digest`), so a
re-sent batch costs a lookup. Once a batch commits, the real-time tags
of the members it touched are refreshed at once (one statement per dimension for them all), dated
by the facts and marked backfilled, before the next batch is read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
from memberops.tagging.v1 import tagging_service_pb2

from runtime.db import Database
from runtime.errors import AlreadyExists, FieldViolation, InvalidArgument
from services.tagging import import_store
from services.tagging.domain import BehaviorEvent, OrderInput, OrderState, Refund, RefundInput
from services.tagging.evaluation import INPUT_BITS, Tagger
from services.tagging.facts import (
    content_hash,
    plan_refund,
    refund_payload,
    validate_events,
    validate_order,
    validate_refund,
)
from services.tagging.members import MAX_IMPORT_BATCH, bounded
from services.tagging.rules import Input

# Members refreshed in one transaction after a batch: a batch's 10,000 orders touch at most as many.
REFRESH_CHUNK = 10_000
# A batch's store or refresh that deadlocks with a concurrent writer is run again (as realtime.py's lanes do).
ATTEMPTS = 3

T = TypeVar("T")
P = TypeVar("P")


@dataclass(frozen=True)
class Counts:
    """One batch's (or a stream's) facts: received, newly stored, already stored as sent."""

    received: int = 0
    stored: int = 0

    @property
    def unchanged(self) -> int:
        return self.received - self.stored

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.received + other.received, self.stored + other.stored)


@dataclass(frozen=True)
class OrderBatch:
    """A validated batch of orders as COPY rows (import_store's staging columns): its orders not
    already stored as sent, `order_ids` being all of them (errors name a row by its index)."""

    path: str
    order_ids: list[str]
    order_rows: list[tuple[Any, ...]]
    line_rows: list[tuple[Any, ...]]


@dataclass(frozen=True)
class RefundBatch:
    """A validated batch of refunds: planning them needs their orders, so the rest is done storing."""

    path: str
    refunds: Sequence[RefundInput]
    kept: list[tuple[int, RefundInput, str]]


@dataclass(frozen=True)
class EventBatch:
    path: str
    received: int
    rows: list[tuple[Any, ...]]


@dataclass(frozen=True)
class Committed:
    """A batch stored: its counts, and the members whose tags it owes a refresh of `changed` facts."""

    counts: Counts
    member_ids: list[str]
    changed: Input


def relocated(error: InvalidArgument, old: str, new: str) -> list[FieldViolation]:
    """The error's violations with the field prefix `old` (a single fact's path) renamed `new`."""
    return [
        FieldViolation(new + v.field[len(old) :], v.description) if v.field.startswith(old) else v
        for v in error.violations
    ]


def converted(messages: Sequence[Any], convert: Callable[[Any, int], T], single: str, path: str) -> list[T]:
    """Each message converted to its domain input; a bad one's violations are renamed from
    `single` (the path conversion gives it; `{i}` stands for its index) to `path[i]` and the batch
    rejected with all of them."""
    return [item for _, item in converted_at(list(enumerate(messages)), convert, single, path)]


def converted_at(
    messages: Sequence[tuple[int, Any]], convert: Callable[[Any, int], T], single: str, path: str
) -> list[tuple[int, T]]:
    """`converted` of (index, message) pairs, some of a batch: (index, domain input) pairs."""
    items: list[tuple[int, T]] = []
    found: list[FieldViolation] = []
    for i, message in messages:
        try:
            items.append((i, convert(message, i)))
        except InvalidArgument as error:
            found.extend(relocated(error, single.format(i=i), f"{path}[{i}]"))
    if found:
        raise bounded(found, path)
    return items


def order_digest(order: OrderInput) -> str:
    """`facts.content_hash(order)`, without dataclasses.asdict's deep copy (a third of an import's
    time): the same canonical JSON, so an order recorded by RecordOrder imports as unchanged."""
    canonical = {
        "amount_minor": order.amount_minor,
        "lines": [
            {
                "brand": line.brand,
                "category": line.category,
                "line_id": line.line_id,
                "quantity": line.quantity,
                "sku": line.sku,
                "unit_price_minor": line.unit_price_minor,
            }
            for line in order.lines
        ],
        "member_id": order.member_id,
        "order_id": order.order_id,
        "paid_time": None if order.paid_time is None else str(order.paid_time),
        "payment_method": order.payment_method,
        "store": order.store,
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# The wire digest's format: whatever changes how it is computed changes this, so no digest stored
# before matches one computed after (such an order is then compared by content_hash, as before).
WIRE_DIGEST_FORMAT = b"memberops.tagging.v1.Order/1\n"


def wire_digest(message: Any) -> str:
    """sha256 of an order's deterministic wire form: equal bytes are an equal order, so an equal
    digest stored by an import means the order is stored as sent, and it is 8x cheaper than
    converting the order and hashing its content. Different bytes for the same content (unknown
    fields, another protobuf build) only miss the shortcut: content_hash still decides."""
    return hashlib.sha256(WIRE_DIGEST_FORMAT + message.SerializeToString(deterministic=True)).hexdigest()


def stored_as_sent(order_ids: Sequence[str], digests: Sequence[str], stored: dict[str, str]) -> set[int]:
    """Indexes of the orders whose wire digest is the one stored for their id, unless their id
    appears in the batch with another digest too (then every copy goes the full way, and a
    differing repeat is named as such)."""
    first: dict[str, str] = {}
    mixed: set[str] = set()
    for order_id, digest in zip(order_ids, digests, strict=True):
        if first.setdefault(order_id, digest) != digest:
            mixed.add(order_id)
    return {
        i
        for i, (order_id, digest) in enumerate(zip(order_ids, digests, strict=True))
        if stored.get(order_id) == digest and order_id not in mixed
    }


def _check_size(items: Sequence[Any], path: str, noun: str) -> None:
    if not 1 <= len(items) <= MAX_IMPORT_BATCH:
        raise InvalidArgument.field(path, f"must hold 1-{MAX_IMPORT_BATCH} {noun}")


def _unique(
    items: Sequence[tuple[int, T]], key: Callable[[T], str], digest: Callable[[T], str], path: str, field: str
) -> tuple[list[tuple[int, T, str]], list[FieldViolation]]:
    """(index, item, digest) of each id's first item; an id repeated with other content is a violation."""
    first: dict[str, tuple[int, str]] = {}
    kept: list[tuple[int, T, str]] = []
    found: list[FieldViolation] = []
    for i, item in items:
        value = digest(item)
        seen = first.setdefault(key(item), (i, value))
        if seen[0] == i:
            kept.append((i, item, value))
        elif seen[1] != value:
            found.append(
                FieldViolation(
                    f"{path}[{i}].{field}", f"repeats {path}[{seen[0]}].{field} with other content"
                )
            )
    return kept, found


def _validated(
    items: Sequence[tuple[int, T]],
    validate: Callable[[T, dt.datetime], None],
    single: str,
    key: Callable[[T], str],
    digest: Callable[[T], str],
    now: dt.datetime,
    path: str,
) -> list[tuple[int, T, str]]:
    """(index, fact, digest) of each distinct fact of (index, fact) `items`; raises naming every bad
    fact's fields, renamed from the single-fact path `single` (RecordOrder's `order`) to `path[i]`."""
    found: list[FieldViolation] = []
    for i, item in items:
        try:
            validate(item, now)
        except InvalidArgument as error:
            found.extend(relocated(error, single, f"{path}[{i}]"))
    kept, repeated = _unique(items, key, digest, path, f"{single}_id")
    if found or repeated:
        raise bounded(found + repeated, path)
    return kept


def validate_orders(
    orders: Sequence[tuple[int, OrderInput]], now: dt.datetime, path: str
) -> list[tuple[int, OrderInput, str]]:
    """(index, order, content digest) of each distinct order of (index, order) `orders`."""
    return _validated(orders, validate_order, "order", lambda o: o.order_id, order_digest, now, path)


def validate_refunds(
    refunds: Sequence[RefundInput], now: dt.datetime, path: str
) -> list[tuple[int, RefundInput, str]]:
    _check_size(refunds, path, "refunds")
    return _validated(
        list(enumerate(refunds)), validate_refund, "refund", lambda r: r.refund_id, content_hash, now, path
    )


def validate_event_batch(
    events: Sequence[BehaviorEvent], now: dt.datetime, path: str
) -> list[tuple[int, BehaviorEvent]]:
    """(index, event) of each event id's first event (RecordEvents keeps the first too)."""
    _check_size(events, path, "events")
    found: list[FieldViolation] = []
    for i, event in enumerate(events):
        try:
            validate_events([event], now)
        except InvalidArgument as error:
            found.extend(relocated(error, "events[0]", f"{path}[{i}]"))
    if found:
        raise bounded(found, path)
    first: dict[str, int] = {}
    return [(i, e) for i, e in enumerate(events) if first.setdefault(e.event_id, i) == i]


def _unknown_members(unknown: tuple[int, list[str]] | None, path: str) -> None:
    if unknown is not None:
        index, members = unknown
        raise InvalidArgument.field(
            f"{path}[{index}].member_id",
            f"unknown member(s) {', '.join(members)}: import members before their facts",
        )


def _order_state(row: Any) -> OrderState:
    return OrderState(
        order_id=row["order_id"],
        member_id=row["member_id"],
        paid_time=row["paid_time"],
        amount_minor=row["amount_minor"],
        refunded_amount_minor=row["refunded_amount_minor"],
        bought=dict(zip(row["line_ids"], row["quantities"], strict=True)),
        refunded=dict(zip(row["line_ids"], row["refunded_quantities"], strict=True)),
    )


def _after(order: OrderState, refund: Refund) -> OrderState:
    """`order` once `refund` is taken off it: the next refund of the batch plans against this."""
    refunded = dict(order.refunded)
    for line in refund.lines:
        refunded[line.line_id] = refunded.get(line.line_id, 0) + line.quantity
    return dataclasses.replace(
        order, refunded_amount_minor=order.refunded_amount_minor + refund.amount_minor, refunded=refunded
    )


class FactImports:
    def __init__(self, db: Database, tagger: Tagger) -> None:
        self._db = db
        self._tagger = tagger

    @staticmethod
    def prepare_orders(
        messages: Sequence[Any],
        convert: Callable[[Any], OrderInput],
        digests: Sequence[str],
        unchanged: set[int],
        now: dt.datetime,
        path: str,
    ) -> OrderBatch:
        """Converts and validates a batch's orders but those `unchanged` (stored as sent, so valid
        when stored: they are neither converted nor validated again), and builds the COPY rows of
        the rest: Python's share, no database."""
        _check_size(messages, path, "orders")
        fresh = [(i, m) for i, m in enumerate(messages) if i not in unchanged]
        orders = converted_at(fresh, lambda m, i: convert(m), "order", path)
        kept = validate_orders(orders, now, path)
        order_rows: list[tuple[Any, ...]] = []
        line_rows: list[tuple[Any, ...]] = []
        for i, order, digest in kept:
            order_rows.append(
                (
                    i,
                    order.order_id,
                    order.member_id,
                    order.paid_time,
                    order.amount_minor,
                    order.store,
                    order.payment_method,
                    digest,
                    digests[i],
                )
            )
            line_rows.extend(
                (order.order_id, n, x.line_id, x.sku, x.category, x.brand, x.quantity, x.unit_price_minor)
                for n, x in enumerate(order.lines)
            )
        return OrderBatch(path, [m.order_id for m in messages], order_rows, line_rows)

    async def prepare_order_request(
        self,
        tenant_id: str,
        messages: Sequence[Any],
        convert: Callable[[Any], OrderInput],
        k: int,
        now: dt.datetime,
    ) -> OrderBatch:
        """A batch's orders' wire digests (worker thread), the digests stored for their ids (one
        query), then the rest of the preparation (worker thread) for those not stored as sent."""
        path = f"requests[{k}].orders"
        order_ids, digests = await asyncio.to_thread(
            lambda: ([m.order_id for m in messages], [wire_digest(m) for m in messages])
        )
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            stored = await import_store.import_digests(conn, order_ids)
        unchanged = stored_as_sent(order_ids, digests, stored)
        return await asyncio.to_thread(self.prepare_orders, messages, convert, digests, unchanged, now, path)

    async def store_orders(self, tenant_id: str, batch: OrderBatch, now: dt.datetime) -> Committed:
        path = batch.path
        if not batch.order_rows:
            # Every order stored as sent: nothing to write, and no tag owes a refresh.
            return Committed(Counts(len(batch.order_ids), 0), [], Input.ORDERS)
        async with self._db.transaction(tenant_id) as conn:
            await import_store.stage_orders(conn, batch.order_rows, batch.line_rows)
            _unknown_members(await import_store.first_unknown_member(conn, "order_import"), path)
            stored = await import_store.insert_orders(conn, tenant_id, INPUT_BITS[Input.ORDERS])
            # Staged orders are distinct ids: when all were new, none was stored with other content.
            all_new = stored.count == len(batch.order_rows)
            changed = None if all_new else await import_store.first_changed_order(conn)
            if changed is not None:
                raise AlreadyExists(
                    f"{path}[{changed}].order_id: orders/{batch.order_ids[changed]} was recorded "
                    "before with different content"
                )
        return Committed(Counts(len(batch.order_ids), stored.count), stored.member_ids, Input.ORDERS)

    @staticmethod
    def prepare_refunds(refunds: Sequence[RefundInput], now: dt.datetime, path: str) -> RefundBatch:
        return RefundBatch(path, refunds, validate_refunds(refunds, now, path))

    async def store_refunds(self, tenant_id: str, batch: RefundBatch, now: dt.datetime) -> Committed:
        """Plans the batch's new refunds against their locked orders, then stores them."""
        path, refunds, kept = batch.path, batch.refunds, batch.kept
        async with self._db.transaction(tenant_id) as conn:
            # Locking the orders first serialises imports and RecordRefund of the same orders.
            states = {
                row["order_id"]: _order_state(row)
                for row in await import_store.lock_orders(conn, [r.order_id for _, r, _ in kept])
            }
            missing = next((i for i, r, _ in kept if r.order_id not in states), None)
            if missing is not None:
                raise InvalidArgument.field(
                    f"{path}[{missing}].order_id",
                    f"orders/{refunds[missing].order_id} has not been recorded; "
                    "import orders before their refunds",
                )
            stored_hashes = await import_store.refund_hashes(conn, [r.refund_id for _, r, _ in kept])
            rows, lines, found = self._plan(kept, states, stored_hashes, path)
            if found:
                raise bounded(found, path)
            stored = 0
            if rows:
                try:
                    stored = await import_store.insert_refunds(
                        conn, tenant_id, rows, lines, INPUT_BITS[Input.ORDERS]
                    )
                except asyncpg.UniqueViolationError:
                    # The same refund id arrived at the same moment for another order.
                    raise AlreadyExists(
                        f"{path}: a refund id was recorded meanwhile with other content"
                    ) from None
        return Committed(Counts(len(refunds), stored), sorted({row[2] for row in rows}), Input.ORDERS)

    @staticmethod
    def _plan(
        kept: Sequence[tuple[int, RefundInput, str]],
        states: dict[str, OrderState],
        stored_hashes: dict[str, str],
        path: str,
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[FieldViolation]]:
        """Plans the new refunds in batch order with RecordRefund's rules, each against its order as
        the refunds before it left it: (refund rows, line rows, violations)."""
        rows: list[tuple[Any, ...]] = []
        lines: list[tuple[Any, ...]] = []
        found: list[FieldViolation] = []
        for i, refund, digest in kept:
            previous = stored_hashes.get(refund.refund_id)
            if previous is not None:
                if previous != digest:
                    raise AlreadyExists(
                        f"{path}[{i}].refund_id: refunds/{refund.refund_id} was recorded before "
                        "with different content"
                    )
                continue
            assert refund.refund_time is not None
            order = states[refund.order_id]
            try:
                planned_lines, amount = plan_refund(refund, order)
            except InvalidArgument as error:
                found.extend(relocated(error, "refund", f"{path}[{i}]"))
                continue
            recorded = Refund(
                refund.refund_id, order.order_id, order.member_id, refund.refund_time, amount, planned_lines
            )
            payload = {**refund_payload(recorded, order), "backfilled": True}
            rows.append(
                (
                    recorded.refund_id,
                    recorded.order_id,
                    recorded.member_id,
                    recorded.refund_time,
                    amount,
                    digest,
                    json.dumps(payload, separators=(",", ":")),
                )
            )
            lines.extend((recorded.refund_id, order.order_id, x.line_id, x.quantity) for x in planned_lines)
            states[refund.order_id] = _after(order, recorded)
        return rows, lines, found

    @staticmethod
    def prepare_events(events: Sequence[BehaviorEvent], now: dt.datetime, path: str) -> EventBatch:
        kept = validate_event_batch(events, now, path)
        rows = [
            (
                i,
                e.event_id,
                e.member_id,
                int(e.kind),
                e.occur_time,
                e.sku,
                e.category,
                e.brand,
                e.query,
                e.channel,
            )
            for i, e in kept
        ]
        return EventBatch(path, len(events), rows)

    async def store_events(self, tenant_id: str, batch: EventBatch, now: dt.datetime) -> Committed:
        async with self._db.transaction(tenant_id) as conn:
            await import_store.stage_events(conn, batch.rows)
            _unknown_members(await import_store.first_unknown_member(conn, "event_import"), batch.path)
            stored = await import_store.insert_events(conn, tenant_id, INPUT_BITS[Input.EVENTS])
        return Committed(Counts(batch.received, stored.count), stored.member_ids, Input.EVENTS)

    async def imported(
        self,
        tenant_id: str,
        requests: AsyncIterator[Any],
        prepare: Callable[[Any, int, dt.datetime], P],
        store: Callable[[str, P, dt.datetime], Coroutine[Any, Any, Committed]],
        clock: Callable[[], dt.datetime],
    ) -> Counts:
        """`_imported` with each batch prepared by `prepare` in a worker thread."""

        async def threaded(request: Any, k: int, now: dt.datetime) -> P:
            return await asyncio.to_thread(prepare, request, k, now)

        return await self._imported(tenant_id, requests, threaded, store, clock)

    async def import_orders(
        self,
        tenant_id: str,
        requests: AsyncIterator[Any],
        convert: Callable[[Any], OrderInput],
        clock: Callable[[], dt.datetime],
    ) -> Counts:
        """ImportOrders: each request's orders (`convert` makes one an OrderInput, raising
        InvalidArgument naming `order.<field>`), the re-sent ones recognised first."""

        async def prepare(request: Any, k: int, now: dt.datetime) -> OrderBatch:
            return await self.prepare_order_request(tenant_id, request.orders, convert, k, now)

        return await self._imported(tenant_id, requests, prepare, self.store_orders, clock)

    async def _imported(
        self,
        tenant_id: str,
        requests: AsyncIterator[Any],
        prepare: Callable[[Any, int, dt.datetime], Awaitable[P]],
        store: Callable[[str, P, dt.datetime], Coroutine[Any, Any, Committed]],
        clock: Callable[[], dt.datetime],
    ) -> Counts:
        """Stores a stream's batches in order, each committed before the next is stored, and
        returns once every batch's members' tags are refreshed.

        Three things overlap: the next batch is prepared (converted, validated, its rows built,
        mostly in a worker thread); the batch before is stored; and the one before that has its
        tags refreshed.
        A refresh owes nothing to the next batch's transaction (each settles only the queue rows it
        saw), and at most one runs beside a store. A bad batch raises only once every batch before
        it is stored; so does a cancelled call.
        """
        counts = Counts()
        pending: asyncio.Task[tuple[Counts, asyncio.Task[None]]] | None = None
        refreshes: list[asyncio.Task[None]] = []
        k = 0
        try:
            async for request in requests:
                now = clock()
                prepared = await prepare(request, k, now)
                if pending is not None:
                    task, pending = pending, None
                    counts += await self._collect(task, refreshes)
                wait_for = refreshes[-2] if len(refreshes) > 1 else None
                pending = asyncio.create_task(self._store(tenant_id, store, prepared, now, wait_for))
                k += 1
            if pending is not None:
                task, pending = pending, None
                counts += await self._collect(task, refreshes)
            await asyncio.gather(*refreshes)
        except BaseException:
            # The batch in flight is stored first (its own failure, being earlier, wins), and no
            # refresh is left running unwatched.
            try:
                if pending is not None:
                    await self._collect(pending, refreshes)
            finally:
                await asyncio.gather(*refreshes, return_exceptions=True)
            raise
        return counts

    @staticmethod
    async def _collect(
        task: asyncio.Task[tuple[Counts, asyncio.Task[None]]], refreshes: list[asyncio.Task[None]]
    ) -> Counts:
        counts, refresh = await task
        refreshes.append(refresh)
        return counts

    async def _store(
        self,
        tenant_id: str,
        store: Callable[[str, P, dt.datetime], Coroutine[Any, Any, Committed]],
        prepared: P,
        now: dt.datetime,
        wait_for: asyncio.Task[None] | None,
    ) -> tuple[Counts, asyncio.Task[None]]:
        """Stores one batch (again, should it deadlock with a concurrent writer: it is idempotent)
        once the refresh two batches back is done, then starts its refresh."""
        if wait_for is not None:
            await asyncio.wait([wait_for])
        for attempt in range(1, ATTEMPTS + 1):
            try:
                committed = await store(tenant_id, prepared, now)
                break
            except asyncpg.DeadlockDetectedError:
                if attempt == ATTEMPTS:
                    raise
        refresh = asyncio.create_task(self._refresh(tenant_id, committed.member_ids, committed.changed, now))
        return committed.counts, refresh

    async def _refresh(
        self, tenant_id: str, member_ids: Sequence[str], changed: Input, now: dt.datetime
    ) -> None:
        """Refreshes the members' real-time tags for the facts just committed, one statement per
        dimension for up to REFRESH_CHUNK members; the changes are dated by the facts (their queue
        rows' fact_time) and marked backfilled. Should it fail, the queue rows stay owed and the
        service's sweeper refreshes them later."""
        ids = sorted(member_ids)
        for start in range(0, len(ids), REFRESH_CHUNK):
            changes = dict.fromkeys(ids[start : start + REFRESH_CHUNK], INPUT_BITS[changed])
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    async with self._db.transaction(tenant_id, plans="custom") as conn:
                        await self._tagger.refresh_owed(conn, tenant_id, changes, now, backfilled=True)
                    break
                except asyncpg.DeadlockDetectedError:
                    if attempt == ATTEMPTS:
                        raise


def import_response(counts: Counts) -> tagging_service_pb2.ImportFactsResponse:
    return tagging_service_pb2.ImportFactsResponse(
        received_count=counts.received, stored_count=counts.stored, unchanged_count=counts.unchanged
    )
