"""Fact imports (ImportOrders, ImportRefunds, ImportEvents): history loaded in batches.

Each batch is validated row by row with RecordOrder's, RecordRefund's and RecordEvents' own rules
(errors name `requests[k].orders[i].field`), stored in one transaction with COPY and set-based
statements (import_store), and idempotent by natural key: a fact stored before with the same
content is unchanged, with other content ALREADY_EXISTS. A re-sent order is recognised before
it is converted, by the digest of its wire form stored when it was imported (`wire_digest`), so a
re-sent batch costs a lookup. Once the stream's last batch commits, the real-time tags of every
member it touched are refreshed (one statement per dimension for up to REFRESH_CHUNK members),
dated by the facts and marked backfilled, before the reply.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
from memberops.tagging.v1 import tagging_service_pb2

from runtime.db import Database
from runtime.errors import AlreadyExists, FieldViolation, InvalidArgument
from runtime.logs import get_logger
from services.tagging import import_store, order_rows
from services.tagging.backfill_refresh import REFRESH_LANES, BackfillRefresh
from services.tagging.domain import BehaviorEvent, OrderInput, OrderState, Refund, RefundInput
from services.tagging.evaluation import INPUT_BITS, Tagger
from services.tagging.facts import (
    content_hash,
    order_digest,
    plan_refund,
    refund_payload,
    validate_events,
    validate_order,
    validate_refund,
)
from services.tagging.members import MAX_IMPORT_BATCH, bounded
from services.tagging.rules import Input

# A stream refreshes the members it touched on the way once the oldest has waited this long:
# well within the sweeper's grace for import queue rows (import_store.SWEEP_GRACE, 5 minutes).
REFRESH_AFTER_SECONDS = 60.0
# A batch's store that deadlocks with a concurrent writer is run again (as realtime.py's lanes do).
ATTEMPTS = 3

log = get_logger("memberops.tagging.fact_imports")

T = TypeVar("T")
P = TypeVar("P")
# What a batch's store awaits before it writes: the batch before it has committed.
Turn = Callable[[], Awaitable[None]]


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


@dataclass(frozen=True)
class _Rows:
    """An order's COPY rows, with its id and content digest (which decide its repeats in a batch)."""

    order_id: str
    digest: str
    order: order_rows.OrderRow | None  # None: invalid (the batch is rejected)
    lines: list[order_rows.LineRow]


def rows_of(i: int, order: OrderInput, wire: str) -> _Rows:
    """The COPY rows of an order converted to an OrderInput (the full way)."""
    digest = order_digest(order)
    assert order.paid_time is not None  # validated
    row = (
        i,
        order.order_id,
        order.member_id,
        order.paid_time,
        order.amount_minor,
        order.store,
        order.payment_method,
        digest,
        wire,
        list(order.coupon_codes) or None,
        order_rows.payload_head(order),
    )
    lines = [
        (order.order_id, n, x.line_id, x.sku, x.category, x.brand, x.quantity, x.unit_price_minor)
        for n, x in enumerate(order.lines)
    ]
    return _Rows(order.order_id, digest, row, lines)


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
        self._backfill = BackfillRefresh(db, tagger)
        # Refreshes of failed or cancelled streams, left running past their call.
        self._detached: set[asyncio.Task[None]] = set()

    @staticmethod
    def prepare_orders(
        messages: Sequence[Any],
        convert: Callable[[Any], OrderInput],
        digests: Sequence[str],
        unchanged: set[int],
        now: dt.datetime,
        path: str,
    ) -> OrderBatch:
        """Validates a batch's orders but those `unchanged` (stored as sent, so valid when stored:
        they are neither converted nor validated again), and builds the COPY rows of the rest:
        Python's share, no database. An order is read straight from its message when
        order_rows.plain_rows vouches for it, else converted and validated field by field."""
        _check_size(messages, path, "orders")
        latest = order_rows.latest_micros(now)
        candidates: list[tuple[int, _Rows]] = []
        full_way: list[tuple[int, Any]] = []
        for i, message in enumerate(messages):
            if i in unchanged:
                continue
            plain = order_rows.plain_rows(message, i, digests[i], latest)
            if plain is None:
                full_way.append((i, message))
            else:
                candidates.append((i, _Rows(plain[0][1], plain[0][7], *plain)))
        found: list[FieldViolation] = []
        if full_way:
            for i, order in converted_at(full_way, lambda m, i: convert(m), "order", path):
                try:
                    validate_order(order, now)
                except InvalidArgument as error:
                    found.extend(relocated(error, "order", f"{path}[{i}]"))
                    # Only its id and content count: whether it repeats an order of the batch.
                    candidates.append((i, _Rows(order.order_id, order_digest(order), None, [])))
                    continue
                candidates.append((i, rows_of(i, order, digests[i])))
            candidates.sort(key=lambda c: c[0])
        kept, repeated = _unique(candidates, lambda c: c.order_id, lambda c: c.digest, path, "order_id")
        if found or repeated:
            raise bounded(found + repeated, path)
        line_rows: list[order_rows.LineRow] = []
        for _, rows, _ in kept:
            line_rows.extend(rows.lines)
        orders = [rows.order for _, rows, _ in kept if rows.order is not None]
        return OrderBatch(path, [m.order_id for m in messages], orders, line_rows)

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

    async def store_orders(
        self, tenant_id: str, batch: OrderBatch, now: dt.datetime, turn: Turn
    ) -> Committed:
        """Stages the batch while the one before is still being stored, then, once that one has
        committed (`turn`), writes it."""
        path = batch.path
        if not batch.order_rows:
            # Every order stored as sent: nothing to write, and no tag owes a refresh.
            return Committed(Counts(len(batch.order_ids), 0), [], Input.ORDERS)
        async with self._db.transaction(tenant_id) as conn:
            await import_store.stage_orders(conn, batch.order_rows, batch.line_rows)
            unknown = await import_store.first_unknown_member(conn, "order_import")
            await turn()
            _unknown_members(unknown, path)
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

    async def store_refunds(
        self, tenant_id: str, batch: RefundBatch, now: dt.datetime, turn: Turn
    ) -> Committed:
        """Plans the batch's new refunds against their locked orders (as the batch before left
        them: it waits for its `turn`), then stores them."""
        path, refunds, kept = batch.path, batch.refunds, batch.kept
        await turn()
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

    async def store_events(
        self, tenant_id: str, batch: EventBatch, now: dt.datetime, turn: Turn
    ) -> Committed:
        async with self._db.transaction(tenant_id) as conn:
            await import_store.stage_events(conn, batch.rows)
            unknown = await import_store.first_unknown_member(conn, "event_import")
            await turn()
            _unknown_members(unknown, batch.path)
            stored = await import_store.insert_events(conn, tenant_id, INPUT_BITS[Input.EVENTS])
        return Committed(Counts(batch.received, stored.count), stored.member_ids, Input.EVENTS)

    async def imported(
        self,
        tenant_id: str,
        requests: AsyncIterator[Any],
        prepare: Callable[[Any, int, dt.datetime], P],
        store: Callable[[str, P, dt.datetime, Turn], Coroutine[Any, Any, Committed]],
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
        store: Callable[[str, P, dt.datetime, Turn], Coroutine[Any, Any, Committed]],
        clock: Callable[[], dt.datetime],
    ) -> Counts:
        """Stores a stream's batches in order, each committed before the next is stored, and
        returns once the tags of every member they touched are refreshed.

        The next batch is prepared (converted, validated, its rows built, mostly in a worker
        thread) while the one before is stored. Tags are refreshed once for the stream, after its
        last batch, not after each batch: a member with facts in several batches is refreshed once.
        Only a stream running longer than REFRESH_AFTER_SECONDS refreshes the members touched so
        far on the way (beside the storing), so that no queue row it owes reaches the sweeper's
        grace. A bad batch raises only once every batch before it is stored and their members
        refreshed; so does a cancelled call (its refresh goes on, shielded).
        """
        counts = Counts()
        owed = _Owed()
        # Batches whose store has begun and whose outcome is not collected yet, in stream order:
        # at most two, the later staging (and waiting) while the earlier writes.
        in_flight: list[asyncio.Task[Committed]] = []
        refreshing: asyncio.Task[None] | None = None
        k = 0
        try:
            async for request in requests:
                now = clock()
                prepared = await prepare(request, k, now)
                before = in_flight[-1] if in_flight else None
                in_flight.append(asyncio.create_task(self._store(tenant_id, store, prepared, now, before)))
                k += 1
                if len(in_flight) > 1:
                    counts += owed.add(await asyncio.shield(in_flight[0]))
                    in_flight.pop(0)
                    if owed.due(REFRESH_AFTER_SECONDS):
                        if refreshing is not None:
                            await refreshing
                        refreshing = asyncio.create_task(
                            self._backfill.refresh(tenant_id, owed.take(), now, lanes=1)
                        )
            while in_flight:
                counts += owed.add(await asyncio.shield(in_flight[0]))
                in_flight.pop(0)
            if refreshing is not None:
                last, refreshing = refreshing, None
                await last
            await self._backfill.refresh(tenant_id, owed.take(), clock(), lanes=REFRESH_LANES)
        except BaseException:
            # The batches in flight are stored first, in order (the first failure, being earlier,
            # wins; a batch after a failed one gives up); then what was committed is refreshed, as
            # a whole stream's would be.
            try:
                for batch in in_flight:
                    owed.add(await asyncio.shield(batch))
            finally:
                if in_flight:
                    await asyncio.wait(in_flight)
                    for batch in in_flight:  # retrieved: those after a failure gave up
                        _ = batch.cancelled() or batch.exception()
                await self._refresh_anyway(tenant_id, owed, refreshing, clock())
            raise
        return counts

    async def _refresh_anyway(
        self, tenant_id: str, owed: _Owed, refreshing: asyncio.Task[None] | None, now: dt.datetime
    ) -> None:
        """A failed or cancelled stream's refresh of its committed members, shielded from the
        call's cancellation; its own failure is logged, not raised (the stream's error is the
        answer, and the queue rows stay owed for the sweeper)."""
        work = asyncio.create_task(self._refresh_after(tenant_id, owed.take(), refreshing, now))
        self._detached.add(work)
        work.add_done_callback(self._detached.discard)
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the stream's own error is what the caller is answered
            log.warning("import refresh failed", tenant=tenant_id, error=str(error))

    async def _refresh_after(
        self, tenant_id: str, changes: dict[str, int], refreshing: asyncio.Task[None] | None, now: dt.datetime
    ) -> None:
        if refreshing is not None:
            await asyncio.wait([refreshing])
            if not refreshing.cancelled() and refreshing.exception() is not None:
                log.warning("import refresh failed", tenant=tenant_id, error=str(refreshing.exception()))
        await self._backfill.refresh(tenant_id, changes, now, lanes=REFRESH_LANES)

    async def _store(
        self,
        tenant_id: str,
        store: Callable[[str, P, dt.datetime, Turn], Coroutine[Any, Any, Committed]],
        prepared: P,
        now: dt.datetime,
        before: asyncio.Task[Committed] | None,
    ) -> Committed:
        """Stores one batch once the batch `before` it has committed (again, should it deadlock
        with a concurrent writer: it is idempotent). If that batch failed, this one gives up."""

        async def turn() -> None:
            if before is not None:
                await asyncio.wait([before])
                if before.cancelled() or before.exception() is not None:
                    raise _GaveUp

        for attempt in range(1, ATTEMPTS + 1):
            try:
                return await store(tenant_id, prepared, now, turn)
            except asyncpg.DeadlockDetectedError:
                if attempt == ATTEMPTS:
                    raise
        raise AssertionError("unreachable")


class _GaveUp(Exception):
    """A batch not stored because the one before it failed (whose error is the stream's answer)."""


class _Owed:
    """The members a stream's committed batches owe a refresh (member -> input bits), and since when."""

    def __init__(self) -> None:
        self.changes: dict[str, int] = {}
        self.since: float | None = None

    def add(self, committed: Committed) -> Counts:
        bits = INPUT_BITS[committed.changed]
        if committed.member_ids and self.since is None:
            self.since = time.monotonic()
        for member_id in committed.member_ids:
            self.changes[member_id] = self.changes.get(member_id, 0) | bits
        return committed.counts

    def due(self, seconds: float) -> bool:
        return self.since is not None and time.monotonic() - self.since >= seconds

    def take(self) -> dict[str, int]:
        changes, self.changes, self.since = self.changes, {}, None
        return changes


def import_response(counts: Counts) -> tagging_service_pb2.ImportFactsResponse:
    return tagging_service_pb2.ImportFactsResponse(
        received_count=counts.received, stored_count=counts.stored, unchanged_count=counts.unchanged
    )
