"""SQL of the tagging schema. Every function runs on a connection already inside a tenant transaction."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from services.common import outbox
from services.common.db import Connection
from services.common.errors import AlreadyExists, NotFound
from services.tagging.domain import (
    BehaviorEvent,
    Contact,
    FeedEntry,
    FeedKind,
    Member,
    MemberInput,
    Order,
    OrderInput,
    OrderLine,
    OrderState,
    Profile,
    Refund,
    RefundLine,
)

# --- members -----------------------------------------------------------------------------------

_MEMBER_COLUMNS = """member_id, gender, birthday, city, city_tier, register_time, register_channel,
    nickname, level, phone, email, preferred_channel, opted_out_channels, time_zone,
    attributes::text AS attributes, revision, create_time, update_time"""

_MEMBER_FIELDS = """gender, birthday, city, city_tier, register_time, register_channel, nickname, level,
    phone, email, preferred_channel, opted_out_channels, time_zone, attributes"""


def _incoming(field: str) -> str:
    """The value an upsert stores in `field`. An empty level keeps the stored one: the level may be
    the tasks service's to write (UpdateMember), and a backend replacing the rest of the member
    without it must not clear it."""
    if field == "level":
        return "COALESCE(NULLIF(EXCLUDED.level, ''), m.level)"
    return f"EXCLUDED.{field}"


_FIELD_NAMES = [f.strip() for f in _MEMBER_FIELDS.split(",")]
# An upsert whose content equals the stored row updates nothing, so a retried or duplicated call
# leaves revision and update_time alone; RETURNING is then empty and the row is read afterwards.
# UpsertMember and ImportMembers share this clause, so both follow exactly the same rules.
_UPSERT_ON_CONFLICT = f"""
ON CONFLICT (tenant_id, member_id) DO UPDATE SET
    ({_MEMBER_FIELDS}) = ROW({", ".join(_incoming(f) for f in _FIELD_NAMES)}),
    revision = m.revision + 1,
    update_time = now()
WHERE ({", ".join(f"m.{f}" for f in _FIELD_NAMES)})
    IS DISTINCT FROM ({", ".join(_incoming(f) for f in _FIELD_NAMES)})"""

_UPSERT = f"""
INSERT INTO tagging.members AS m (tenant_id, member_id, {_MEMBER_FIELDS})
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16::jsonb)
{_UPSERT_ON_CONFLICT}
RETURNING {_MEMBER_COLUMNS}
"""

_GET_MEMBER = f"SELECT {_MEMBER_COLUMNS} FROM tagging.members WHERE member_id = $1"


def _member_values(member: MemberInput) -> tuple[Any, ...]:
    """member_id, then the columns of _MEMBER_FIELDS in order: one conversion for upsert and import."""
    p, c = member.profile, member.contact
    return (
        member.member_id,
        int(p.gender),
        p.birthday,
        p.city,
        int(p.city_tier),
        p.register_time,
        p.register_channel,
        p.nickname,
        p.level,
        c.phone,
        c.email,
        int(c.preferred_channel),
        [int(ch) for ch in c.opted_out_channels],
        c.time_zone,
        json.dumps(member.attributes, separators=(",", ":"), sort_keys=True),
    )


async def upsert_member(conn: Connection, tenant_id: str, member: MemberInput) -> tuple[Member, bool]:
    """Stores the member; returns it and whether anything changed."""
    row = await conn.fetchrow(_UPSERT, tenant_id, *_member_values(member))
    changed = row is not None
    if row is None:
        row = await conn.fetchrow(_GET_MEMBER, member.member_id)
    assert row is not None, "upsert left no row"
    return _member(row), changed


async def get_member(conn: Connection, member_id: str) -> Member | None:
    row = await conn.fetchrow(_GET_MEMBER, member_id)
    return None if row is None else _member(row)


async def lock_member(conn: Connection, member_id: str) -> Member | None:
    row = await conn.fetchrow(f"{_GET_MEMBER} FOR UPDATE", member_id)
    return None if row is None else _member(row)


async def get_members(conn: Connection, member_ids: Sequence[str]) -> list[Member]:
    """The members of these ids that exist, in no particular order."""
    rows = await conn.fetch(
        f"SELECT {_MEMBER_COLUMNS} FROM tagging.members WHERE member_id = ANY($1::text[])", member_ids
    )
    return [_member(row) for row in rows]


async def missing_members(conn: Connection, member_ids: list[str]) -> set[str]:
    rows = await conn.fetch(
        "SELECT member_id FROM tagging.members WHERE member_id = ANY($1::text[])", member_ids
    )
    return set(member_ids) - {r["member_id"] for r in rows}


def _member(row: asyncpg.Record) -> Member:
    return Member(
        member_id=row["member_id"],
        profile=Profile(
            gender=row["gender"],
            birthday=row["birthday"],
            city=row["city"],
            city_tier=row["city_tier"],
            register_time=row["register_time"],
            register_channel=row["register_channel"],
            nickname=row["nickname"],
            level=row["level"],
        ),
        attributes=json.loads(row["attributes"]),
        contact=Contact(
            phone=row["phone"],
            email=row["email"],
            preferred_channel=row["preferred_channel"],
            opted_out_channels=tuple(row["opted_out_channels"]),
            time_zone=row["time_zone"],
        ),
        revision=row["revision"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


# --- orders and refunds ------------------------------------------------------------------------


async def insert_order(conn: Connection, tenant_id: str, order: OrderInput, digest: str) -> int | None:
    """Inserts the order and its lines; returns its number among the member's orders (1 for the
    first one recorded), or None when an order with that id exists already.

    The count is of the orders the statement's snapshot sees (RETURNING does not see the row it
    inserts): two first orders of one member committing concurrently may both be number 1."""
    try:
        number: int | None = await conn.fetchval(
            """INSERT INTO tagging.orders
                   (tenant_id, order_id, member_id, paid_time, amount_minor, store, payment_method,
                    content_hash)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
               ON CONFLICT (tenant_id, order_id) DO NOTHING
               RETURNING (SELECT count(*) + 1 FROM tagging.orders o
                          WHERE o.tenant_id = $1 AND o.member_id = $3)""",
            tenant_id,
            order.order_id,
            order.member_id,
            order.paid_time,
            order.amount_minor,
            order.store,
            order.payment_method,
            digest,
        )
    except asyncpg.ForeignKeyViolationError:
        raise NotFound(
            f"order.member_id: members/{order.member_id} not found; upsert the member first"
        ) from None
    if number is None:
        return None
    # One statement, so the purchase-recency trigger fires once and upserts the member's categories
    # in key order: line by line, two orders listing categories in opposite order would deadlock.
    await conn.execute(
        """INSERT INTO tagging.order_lines
               (tenant_id, order_id, line_id, member_id, paid_time, sku, category, brand, quantity,
                unit_price_minor)
           SELECT $1, $2, l.line_id, $3, $4, l.sku, l.category, l.brand, l.quantity, l.unit_price_minor
           FROM unnest($5::text[], $6::text[], $7::text[], $8::text[], $9::int[], $10::bigint[])
                AS l(line_id, sku, category, brand, quantity, unit_price_minor)""",
        tenant_id,
        order.order_id,
        order.member_id,
        order.paid_time,
        [line.line_id for line in order.lines],
        [line.sku for line in order.lines],
        [line.category for line in order.lines],
        [line.brand for line in order.lines],
        [line.quantity for line in order.lines],
        [line.unit_price_minor for line in order.lines],
    )
    return number


async def order_hash(conn: Connection, order_id: str) -> str | None:
    value: str | None = await conn.fetchval(
        "SELECT content_hash FROM tagging.orders WHERE order_id = $1", order_id
    )
    return value


async def get_order(conn: Connection, order_id: str) -> Order | None:
    row = await conn.fetchrow(
        """SELECT order_id, member_id, paid_time, amount_minor, store, payment_method,
                  refunded_amount_minor, record_time
           FROM tagging.orders WHERE order_id = $1""",
        order_id,
    )
    if row is None:
        return None
    lines = await conn.fetch(
        """SELECT line_id, sku, category, brand, quantity, unit_price_minor
           FROM tagging.order_lines WHERE order_id = $1 ORDER BY line_id""",
        order_id,
    )
    return Order(
        order_id=row["order_id"],
        member_id=row["member_id"],
        paid_time=row["paid_time"],
        amount_minor=row["amount_minor"],
        lines=tuple(OrderLine(**dict(line)) for line in lines),
        store=row["store"],
        payment_method=row["payment_method"],
        refunded_amount_minor=row["refunded_amount_minor"],
        record_time=row["record_time"],
    )


async def lock_order_state(conn: Connection, order_id: str) -> OrderState | None:
    row = await conn.fetchrow(
        """SELECT order_id, member_id, paid_time, amount_minor, refunded_amount_minor
           FROM tagging.orders WHERE order_id = $1 FOR UPDATE""",
        order_id,
    )
    if row is None:
        return None
    lines = await conn.fetch(
        "SELECT line_id, quantity, refunded_quantity FROM tagging.order_lines WHERE order_id = $1", order_id
    )
    return OrderState(
        order_id=row["order_id"],
        member_id=row["member_id"],
        paid_time=row["paid_time"],
        amount_minor=row["amount_minor"],
        refunded_amount_minor=row["refunded_amount_minor"],
        bought={line["line_id"]: line["quantity"] for line in lines},
        refunded={line["line_id"]: line["refunded_quantity"] for line in lines},
    )


async def refund_hash(conn: Connection, refund_id: str) -> str | None:
    value: str | None = await conn.fetchval(
        "SELECT content_hash FROM tagging.refunds WHERE refund_id = $1", refund_id
    )
    return value


async def insert_refund(conn: Connection, tenant_id: str, refund: Refund, digest: str) -> None:
    """Records the refund and takes its lines and amount off the order."""
    try:
        await conn.execute(
            """INSERT INTO tagging.refunds
                   (tenant_id, refund_id, order_id, member_id, refund_time, amount_minor, content_hash)
               VALUES ($1, $2, $3, $4, $5, $6, $7)""",
            tenant_id,
            refund.refund_id,
            refund.order_id,
            refund.member_id,
            refund.refund_time,
            refund.amount_minor,
            digest,
        )
    except asyncpg.UniqueViolationError:
        # The same refund id arrived at the same moment for another order.
        raise AlreadyExists(
            f"refunds/{refund.refund_id} was recorded before with different content"
        ) from None
    lines = [(tenant_id, refund.refund_id, line.line_id, line.quantity) for line in refund.lines]
    await conn.executemany(
        "INSERT INTO tagging.refund_lines (tenant_id, refund_id, line_id, quantity) VALUES ($1, $2, $3, $4)",
        lines,
    )
    await conn.execute(
        """UPDATE tagging.order_lines AS l SET refunded_quantity = l.refunded_quantity + r.quantity
           FROM unnest($2::text[], $3::int[]) AS r(line_id, quantity)
           WHERE l.order_id = $1 AND l.line_id = r.line_id""",
        refund.order_id,
        [line.line_id for line in refund.lines],
        [line.quantity for line in refund.lines],
    )
    await conn.execute(
        "UPDATE tagging.orders SET refunded_amount_minor = refunded_amount_minor + $2 WHERE order_id = $1",
        refund.order_id,
        refund.amount_minor,
    )


async def get_refund(conn: Connection, refund_id: str) -> Refund | None:
    row = await conn.fetchrow(
        """SELECT refund_id, order_id, member_id, refund_time, amount_minor
           FROM tagging.refunds WHERE refund_id = $1""",
        refund_id,
    )
    if row is None:
        return None
    lines = await conn.fetch(
        "SELECT line_id, quantity FROM tagging.refund_lines WHERE refund_id = $1 ORDER BY line_id", refund_id
    )
    return Refund(**dict(row), lines=tuple(RefundLine(**dict(line)) for line in lines))


# --- events --------------------------------------------------------------------------------------

_INSERT_EVENTS = """
WITH recorded AS (
    INSERT INTO tagging.events
        (tenant_id, event_id, member_id, kind, occur_time, sku, category, brand, query, channel)
    SELECT $1, * FROM unnest($2::text[], $3::text[], $4::smallint[], $5::timestamptz[],
                             $6::text[], $7::text[], $8::text[], $9::text[], $10::text[])
    ON CONFLICT (tenant_id, event_id) DO NOTHING
    RETURNING *
)
INSERT INTO tagging.feed (tenant_id, kind, member_id, subject_id, payload)
SELECT tenant_id, $11, member_id, event_id,
       jsonb_build_object('event_id', event_id, 'member_id', member_id, 'kind', kind,
                          'occur_time', occur_time, 'sku', sku, 'category', category,
                          'brand', brand, 'query', query, 'channel', channel)
FROM recorded
ORDER BY occur_time, event_id
"""


async def insert_events(conn: Connection, tenant_id: str, events: list[BehaviorEvent]) -> int:
    """Inserts the events not seen before, each with its feed entry; returns how many were new."""
    status = await conn.execute(
        _INSERT_EVENTS,
        tenant_id,
        [e.event_id for e in events],
        [e.member_id for e in events],
        [int(e.kind) for e in events],
        [e.occur_time for e in events],
        [e.sku for e in events],
        [e.category for e in events],
        [e.brand for e in events],
        [e.query for e in events],
        [e.channel for e in events],
        int(FeedKind.EVENT_RECORDED),
    )
    return int(status.rsplit(" ", 1)[-1])


# --- feed ----------------------------------------------------------------------------------------


async def append_feed(
    conn: Connection, tenant_id: str, kind: FeedKind, member_id: str, subject_id: str, payload: dict[str, Any]
) -> None:
    await conn.execute(
        """INSERT INTO tagging.feed (tenant_id, kind, member_id, subject_id, payload)
           VALUES ($1, $2, $3, $4, $5::jsonb)""",
        tenant_id,
        int(kind),
        member_id,
        subject_id,
        json.dumps(payload, separators=(",", ":"), default=str),
    )


_FEED_COLUMNS = "kind, member_id, subject_id, payload::text AS payload, create_time"


async def read_feed(
    conn: Connection,
    after: outbox.Position | None,
    limit: int,
    kinds: Sequence[FeedKind] = (),
    upto: outbox.Position | None = None,
) -> list[FeedEntry]:
    """Settled entries after `after`; with `kinds`, only those kinds and none after `upto`."""
    if kinds:
        assert upto is not None
        rows = await outbox.read_settled(
            conn,
            "tagging.feed",
            _FEED_COLUMNS,
            after,
            limit,
            "kind = ANY($4::smallint[]) AND (txid, seq) <= ($5::text::xid8, $6::bigint)",
            [[int(k) for k in kinds], str(upto[0]), upto[1]],
        )
    else:
        rows = await outbox.read_settled(conn, "tagging.feed", _FEED_COLUMNS, after, limit)
    return [
        FeedEntry(
            cursor=outbox.cursor_of(row),
            kind=FeedKind(row["kind"]),
            member_id=row["member_id"],
            subject_id=row["subject_id"],
            payload=json.loads(row["payload"]),
            create_time=row["create_time"],
        )
        for row in rows
    ]


# --- tag catalog ---------------------------------------------------------------------------------

_DEFINITION = """
SELECT d.dimension, v.version, d.state, v.body::text AS body, v.content_hash, d.create_time,
       d.update_time
FROM tagging.tag_definitions d
JOIN tagging.tag_definition_versions v ON v.dimension = d.dimension"""


def _definition_row(row: asyncpg.Record) -> dict[str, Any]:
    return {**dict(row), "body": json.loads(row["body"])}


async def insert_definition(
    conn: Connection, tenant_id: str, dimension: str, body: dict[str, Any], digest: str
) -> bool:
    """Creates the dimension at version 1; False when it exists already."""
    created = await conn.fetchval(
        """INSERT INTO tagging.tag_definitions (tenant_id, dimension, current_version)
           VALUES ($1, $2, 1) ON CONFLICT (tenant_id, dimension) DO NOTHING RETURNING true""",
        tenant_id,
        dimension,
    )
    if created:
        await _insert_version(conn, tenant_id, dimension, 1, body, digest)
    return bool(created)


async def _insert_version(
    conn: Connection, tenant_id: str, dimension: str, version: int, body: dict[str, Any], digest: str
) -> None:
    await conn.execute(
        """INSERT INTO tagging.tag_definition_versions (tenant_id, dimension, version, body, content_hash)
           VALUES ($1, $2, $3, $4::jsonb, $5)""",
        tenant_id,
        dimension,
        version,
        json.dumps(body, separators=(",", ":")),
        digest,
    )


async def add_definition_version(
    conn: Connection, tenant_id: str, dimension: str, version: int, body: dict[str, Any], digest: str
) -> None:
    await _insert_version(conn, tenant_id, dimension, version, body, digest)
    await conn.execute(
        "UPDATE tagging.tag_definitions SET current_version = $2, update_time = now() WHERE dimension = $1",
        dimension,
        version,
    )


async def get_definition(
    conn: Connection, dimension: str, version: int | None
) -> tuple[dict[str, Any], str] | None:
    """The definition at `version` (the current one when None) and its content hash."""
    row = await conn.fetchrow(
        f"{_DEFINITION} AND v.version = COALESCE($2, d.current_version) WHERE d.dimension = $1",
        dimension,
        version,
    )
    return None if row is None else (_definition_row(row), row["content_hash"])


async def lock_definition(conn: Connection, dimension: str) -> tuple[dict[str, Any], str] | None:
    """Locks the definition, then reads its current version: locked in the same statement as the
    join, a lock that waited for a concurrent update would recheck the join against the old version
    row and find nothing."""
    if not await conn.fetchval(
        "SELECT true FROM tagging.tag_definitions WHERE dimension = $1 FOR UPDATE", dimension
    ):
        return None
    return await get_definition(conn, dimension, None)


async def list_definitions(
    conn: Connection, after_dimension: str, limit: int, include_retired: bool
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"""{_DEFINITION} AND v.version = d.current_version
            WHERE d.dimension > $1 AND ($3 OR d.state = 1)
            ORDER BY d.dimension LIMIT $2""",
        after_dimension,
        limit,
        include_retired,
    )
    return [_definition_row(row) for row in rows]


async def retire_definition(conn: Connection, dimension: str) -> bool:
    status = await conn.execute(
        """UPDATE tagging.tag_definitions SET state = 2,
               update_time = CASE WHEN state = 2 THEN update_time ELSE now() END
           WHERE dimension = $1""",
        dimension,
    )
    return status != "UPDATE 0"


async def evaluate(conn: Connection, sql: str, args: list[Any]) -> asyncpg.Record:
    """Runs a compiled dimension for one member; the member exists, so there is one row."""
    row = await conn.fetchrow(sql, *args)
    assert row is not None, "the compiled query returns a row per member"
    return row


async def plan_full_recompute(conn: Connection) -> None:
    """A full recompute runs serial plans: its lanes already keep the cores busy, and a parallel plan
    whose workers each build the same hash of a whole-table aggregate (as PostgreSQL 18 picks for
    categories_bought on 1M members) triples the work for a shorter wall time only on an idle
    machine."""
    await conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")


# --- member tags ---------------------------------------------------------------------------------


def _log_tag_changes(tenant: str, dimension: str, version: str, extra_payload: str = "") -> str:
    """CTEs `changes` and `logged`: every row of the `opened` and `closed` CTEs as a feed entry."""
    extra = f", {extra_payload}" if extra_payload else ""
    return f"""changes AS (
    SELECT member_id, value, 'added' AS change FROM opened
    UNION ALL SELECT member_id, value, 'removed' FROM closed
),
logged AS (
    INSERT INTO tagging.feed (tenant_id, kind, member_id, subject_id, payload)
    SELECT {tenant}, {int(FeedKind.TAG_CHANGED)}, member_id, {dimension},
           jsonb_build_object('dimension', {dimension}, 'value', value, 'change', change,
                              'definition_version', {version}{extra})
    FROM changes ORDER BY member_id, change DESC
    RETURNING 1
)"""


_RULE_SOURCE = 1
_OPERATOR_SOURCE = 2


async def apply_dimension(
    conn: Connection,
    tenant_id: str,
    compiled: Any,
    now: Any,
    dimension: str,
    version: int,
    exclusive: bool,
    member_ids: list[str] | None = None,
) -> tuple[int, int]:
    """Makes the stored tags of one rule dimension match its compiled rules; returns (added, removed).

    One statement: the desired member-values are computed, held values no longer desired are
    closed, new ones opened, and each change is written to the feed. Rows another transaction
    changed meanwhile are skipped (`valid_to IS NULL` is re-checked, inserts do nothing on conflict).
    """
    n = len(compiled.params)
    t, d, ver, excl = (f"${n + 1}::text", f"${n + 2}::text", f"${n + 3}::int", f"${n + 4}::boolean")
    members = f"AND t.member_id = ANY({compiled.member_filter})" if compiled.member_filter else ""
    # A single-value dimension's array holds at most one value; reading it directly (not through
    # unnest, which the planner guesses at ten rows a member) keeps the row estimates true.
    desired = (
        "SELECT c.member_id, c.tag_values[1] AS value FROM computed c WHERE cardinality(c.tag_values) > 0"
        if exclusive
        else "SELECT c.member_id, v.value FROM computed c, unnest(c.tag_values) AS v(value)"
    )
    sql = f"""
WITH computed AS ({compiled.sql}),
desired AS ({desired}),
held AS (
    SELECT t.id, t.member_id, t.value FROM tagging.member_tags t
    WHERE t.dimension = {d} AND t.valid_to IS NULL AND t.source = {_RULE_SOURCE} {members}
),
-- One full join finds both sides of the difference: held values no longer desired (no `w`) and
-- desired values not held (no `h`). Two anti-joins would hash both sets twice.
diff AS (
    SELECT h.id, w.member_id, w.value FROM held h
    FULL JOIN desired w ON w.member_id = h.member_id AND w.value = h.value
    WHERE h.id IS NULL OR w.member_id IS NULL
),
-- The closed ids as an array: a join here, planned on stale statistics of a table just filled
-- (one row guessed for thousands), ran as a nested loop of every held tag against every change.
-- A concurrent refresh with a later clock reading may have opened the tag after this statement's
-- evaluation time: it closes at its opening then, never before it.
closed AS (
    UPDATE tagging.member_tags t SET valid_to = greatest($1::timestamptz, t.valid_from)
    WHERE t.id = ANY(ARRAY(SELECT x.id FROM diff x WHERE x.member_id IS NULL)) AND t.valid_to IS NULL
    RETURNING t.member_id, t.value
),
opened AS (
    INSERT INTO tagging.member_tags
        (tenant_id, member_id, dimension, value, definition_version, source, exclusive, valid_from)
    SELECT {t}, x.member_id, {d}, x.value, {ver}, {_RULE_SOURCE}, {excl}, $1::timestamptz FROM diff x
    -- Reading `closed` makes the closing UPDATE finish first (data-modifying CTEs otherwise run in
    -- no set order), so a member's old exclusive value is gone before its new one arrives.
    WHERE (SELECT count(*) FROM closed) >= 0 AND x.id IS NULL
    ON CONFLICT DO NOTHING
    RETURNING member_id, value
),
{_log_tag_changes(t, d, ver)}
SELECT (SELECT count(*) FROM opened) AS added, (SELECT count(*) FROM closed) AS removed,
       (SELECT count(*) FROM logged) AS logged
"""
    row = await conn.fetchrow(sql, *compiled.args(now, member_ids), tenant_id, dimension, version, exclusive)
    assert row is not None
    return int(row["added"]), int(row["removed"])


# A batch that adds at least this many members, and a tenth of the table, has the members table
# analysed before its real-time refresh (see `analyze_members_if_grown`).
ANALYZE_AFTER_ROWS = 1000


async def analyze_members_if_grown(pool: asyncpg.Pool, added: int) -> bool:
    """Refreshes the members table's statistics when `added` new rows are a tenth of it or more.

    The real-time refresh that follows an import at once is planned on the statistics of before
    it: for a table that just grew several-fold they say "a few rows", and a refresh planned on
    them ran for minutes (a nested loop over a scan). Autovacuum analyses at the same 10 % growth,
    but a minute later. Runs outside any tenant transaction, as the login role, which owns the table.
    """
    if added < ANALYZE_AFTER_ROWS:
        return False
    known = await pool.fetchval("SELECT reltuples FROM pg_class WHERE oid = 'tagging.members'::regclass")
    if known is not None and known >= 0 and added < 0.1 * known:
        return False
    await pool.execute("ANALYZE tagging.members")
    return True


async def queue_refresh(conn: Connection, tenant_id: str, member_ids: Sequence[str], inputs: int) -> None:
    """Owes these members a real-time refresh of `inputs` (bits); merged into a row already owed."""
    if not member_ids:
        return
    await conn.execute(
        """INSERT INTO tagging.refresh_queue AS q (tenant_id, member_id, inputs)
           SELECT $1, m.member_id, $3 FROM (SELECT DISTINCT unnest($2::text[]) AS member_id) m
           ORDER BY m.member_id
           ON CONFLICT (tenant_id, member_id)
           DO UPDATE SET inputs = q.inputs | excluded.inputs, seq = nextval('tagging.refresh_queue_seq')""",
        tenant_id,
        list(member_ids),
        inputs,
    )


async def owed_refreshes(conn: Connection, member_ids: Sequence[str]) -> list[asyncpg.Record]:
    """The queue rows of these members: `member_id, inputs, seq`."""
    return list(
        await conn.fetch(
            "SELECT member_id, inputs, seq FROM tagging.refresh_queue WHERE member_id = ANY($1::text[])",
            list(member_ids),
        )
    )


async def settle_refreshes(conn: Connection, seen: Sequence[tuple[str, int]]) -> None:
    """Deletes the queue rows a refresh saw; a row a later fact bumped (a higher seq) stays owed."""
    await conn.execute(
        """DELETE FROM tagging.refresh_queue q
           USING unnest($1::text[], $2::bigint[]) AS s(member_id, seq)
           WHERE q.member_id = s.member_id AND q.seq <= s.seq""",
        [member_id for member_id, _ in seen],
        [seq for _, seq in seen],
    )


async def stale_refreshes(conn: Connection, older_than: float, limit: int) -> list[str]:
    """Members owed a refresh for longer than `older_than` seconds: their request's refresh failed
    or its process died."""
    rows = await conn.fetch(
        """SELECT member_id FROM tagging.refresh_queue
           WHERE queued_at < now() - make_interval(secs => $1) ORDER BY seq LIMIT $2""",
        older_than,
        limit,
    )
    return [row["member_id"] for row in rows]


async def lock_members(conn: Connection, member_ids: list[str]) -> None:
    """Serialises tag evaluation per member: a second writer re-reads facts after the first commits."""
    await conn.execute(
        """SELECT 1 FROM tagging.members WHERE member_id = ANY($1::text[])
           ORDER BY member_id FOR NO KEY UPDATE""",
        member_ids,
    )


_MEMBER_TAG_COLUMNS = """id, member_id, dimension, value, definition_version, source, valid_from, valid_to,
    set_by, reason, removed_by, removed_reason"""


async def member_tags_at(conn: Connection, member_id: str, as_of: Any) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            f"""SELECT {_MEMBER_TAG_COLUMNS} FROM tagging.member_tags
                WHERE member_id = $1 AND valid_from <= $2 AND (valid_to IS NULL OR valid_to > $2)
                ORDER BY dimension, value""",
            member_id,
            as_of,
        )
    )


async def tag_changes(
    conn: Connection, member_id: str, dimension: str, before_id: int | None, limit: int
) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            f"""SELECT {_MEMBER_TAG_COLUMNS} FROM tagging.member_tags
                WHERE ($1 = '' OR member_id = $1) AND ($2 = '' OR dimension = $2)
                  AND ($3::bigint IS NULL OR id < $3)
                ORDER BY id DESC LIMIT $4""",
            member_id,
            dimension,
            before_id,
            limit,
        )
    )


async def active_definition_versions(conn: Connection) -> list[asyncpg.Record]:
    return list(
        await conn.fetch("SELECT dimension, current_version FROM tagging.tag_definitions WHERE state = 1")
    )


_OPERATOR_CHANGE_LOG = (
    _log_tag_changes("$1::text", "$2::text", "$4::int", "'operator', $7::text, 'reason', $8::text")
    + "\nSELECT count(DISTINCT member_id) AS changed FROM changes"
)


async def add_operator_tags(
    conn: Connection,
    tenant_id: str,
    dimension: str,
    value: str,
    version: int,
    exclusive: bool,
    member_ids: list[str],
    operator: str,
    reason: str,
    now: Any,
) -> int:
    """Gives `value` to members lacking it (ending their other one if exclusive); returns how many changed."""
    changed = await conn.fetchval(
        f"""
WITH targets AS (SELECT unnest($5::text[]) AS member_id),
closed AS (
    UPDATE tagging.member_tags t
    SET valid_to = greatest($6::timestamptz, t.valid_from), removed_by = $7::text, removed_reason = $8::text
    FROM targets g
    WHERE $9::boolean AND t.member_id = g.member_id AND t.dimension = $2::text
      AND t.valid_to IS NULL AND t.value <> $3::text
    RETURNING t.member_id, t.value
),
opened AS (
    INSERT INTO tagging.member_tags (tenant_id, member_id, dimension, value, definition_version, source,
                                     exclusive, valid_from, set_by, reason)
    SELECT $1::text, g.member_id, $2::text, $3::text, $4::int, {_OPERATOR_SOURCE}, $9::boolean,
           $6::timestamptz, $7::text, $8::text
    FROM targets g
    -- Reading `closed` makes the UPDATE finish first (see apply_dimension).
    WHERE (SELECT count(*) FROM closed) >= 0
      AND NOT EXISTS (SELECT 1 FROM tagging.member_tags h WHERE h.member_id = g.member_id
                      AND h.dimension = $2::text AND h.value = $3::text AND h.valid_to IS NULL)
    ON CONFLICT DO NOTHING
    RETURNING member_id, value
),
{_OPERATOR_CHANGE_LOG}""",
        tenant_id,
        dimension,
        value,
        version,
        member_ids,
        now,
        operator,
        reason,
        exclusive,
    )
    return int(changed)


async def remove_operator_tags(
    conn: Connection,
    tenant_id: str,
    dimension: str,
    value: str,
    version: int,
    member_ids: list[str],
    operator: str,
    reason: str,
    now: Any,
) -> int:
    """Ends `value` for the members who hold it; returns how many changed."""
    changed = await conn.fetchval(
        f"""
WITH closed AS (
    UPDATE tagging.member_tags t
    SET valid_to = greatest($6::timestamptz, t.valid_from), removed_by = $7::text, removed_reason = $8::text
    WHERE t.member_id = ANY($5::text[]) AND t.dimension = $2::text AND t.value = $3::text
      AND t.valid_to IS NULL
    RETURNING t.member_id, t.value
),
opened AS (SELECT member_id, value FROM closed WHERE false),
{_OPERATOR_CHANGE_LOG}""",
        tenant_id,
        dimension,
        value,
        version,
        member_ids,
        now,
        operator,
        reason,
    )
    return int(changed)


# --- bulk import, stats --------------------------------------------------------------------------

_IMPORT_TABLE = "member_import"
_IMPORT_COLUMNS = ["member_id", *(f.strip() for f in _MEMBER_FIELDS.split(","))]
# The column types come from tagging.members itself, so the COPY target cannot drift from it.
_CREATE_IMPORT_TABLE = f"""CREATE TEMP TABLE {_IMPORT_TABLE} ON COMMIT DROP AS
    SELECT {", ".join(_IMPORT_COLUMNS)} FROM tagging.members WITH NO DATA"""
# Rows go in member id order, so two imports of overlapping batches lock keys in the same order
# and wait for each other instead of deadlocking.
_IMPORT_UPSERT = f"""
INSERT INTO tagging.members AS m (tenant_id, member_id, {_MEMBER_FIELDS})
SELECT $1, {", ".join(_IMPORT_COLUMNS)} FROM pg_temp.{_IMPORT_TABLE} ORDER BY member_id
{_UPSERT_ON_CONFLICT}
RETURNING member_id, revision
"""


async def import_members(
    conn: Connection, tenant_id: str, members: Sequence[MemberInput]
) -> list[tuple[str, int]]:
    """Upserts a batch with UpsertMember's rules: COPY into a temporary table, then one INSERT … SELECT.

    Returns (member_id, revision) of the members created or changed, by member id. Member ids
    must be unique within the batch (one statement cannot update a row twice).
    """
    await conn.execute(_CREATE_IMPORT_TABLE)
    await conn.copy_records_to_table(
        _IMPORT_TABLE, records=[_member_values(m) for m in members], columns=_IMPORT_COLUMNS
    )
    rows = await conn.fetch(_IMPORT_UPSERT, tenant_id)
    return sorted((row["member_id"], row["revision"]) for row in rows)


async def append_feed_many(
    conn: Connection, tenant_id: str, kind: FeedKind, entries: Sequence[tuple[str, str, dict[str, Any]]]
) -> None:
    """Appends (member_id, subject_id, payload) entries in the order given, in one statement."""
    await conn.execute(
        """INSERT INTO tagging.feed (tenant_id, kind, member_id, subject_id, payload)
           SELECT $1, $2, e.member_id, e.subject_id, e.payload::jsonb
           FROM unnest($3::text[], $4::text[], $5::text[])
                WITH ORDINALITY AS e(member_id, subject_id, payload, n)
           ORDER BY e.n""",
        tenant_id,
        int(kind),
        [member_id for member_id, _, _ in entries],
        [subject_id for _, subject_id, _ in entries],
        [json.dumps(payload, separators=(",", ":"), default=str) for _, _, payload in entries],
    )


@dataclass(frozen=True)
class HeldCounts:
    """Members now, and per dimension the members holding any value and each value held."""

    member_count: int
    covered: dict[str, int]
    by_value: dict[str, dict[str, int]]


# One statement, so the member count and the tag counts come from one snapshot. A member holds a
# value at most once at a time (index member_tags_holders), so per value the distinct count is
# the row count; per dimension (the grouping set without value) it counts each member once.
_HELD_COUNTS = """
SELECT NULL::text AS dimension, NULL::text AS value, count(*) AS members FROM tagging.members
UNION ALL
SELECT dimension, CASE WHEN GROUPING(value) = 0 THEN value END, count(DISTINCT member_id)
FROM tagging.member_tags
WHERE valid_to IS NULL AND dimension = ANY($1::text[])
GROUP BY GROUPING SETS ((dimension, value), (dimension))
"""


async def held_counts(conn: Connection, dimensions: Sequence[str]) -> HeldCounts:
    """How many members there are, and how many hold the current values of `dimensions`."""
    member_count = 0
    covered: dict[str, int] = {}
    by_value: dict[str, dict[str, int]] = {}
    for row in await conn.fetch(_HELD_COUNTS, list(dimensions)):
        if row["dimension"] is None:
            member_count = row["members"]
        elif row["value"] is None:
            covered[row["dimension"]] = row["members"]
        else:
            by_value.setdefault(row["dimension"], {})[row["value"]] = row["members"]
    return HeldCounts(member_count, covered, by_value)
