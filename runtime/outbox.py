"""The feed contract every service's outbox follows (tagging's, audience's and tasks' feeds).

Entries are rows `(txid, seq)`: the writing transaction's id and a sequence. Once a transaction
has committed, the service's sequencer (`runtime/feed_sequencer.py`) gives it the next position
(`<feed>_positions`), and readers order entries by (position, seq). A position is assigned only to a
committed transaction, by one sequencer at a time whose assignment commits before the next one
starts, so positions become visible in increasing order: nothing can later appear behind a cursor a
consumer holds, and no transaction still running, however long, holds anything else back.

A cursor is `p<position>-<seq>` of the last entry read. Cursors of the first contract,
`<txid>-<seq>`, are still accepted (`Legacy`): they are resolved to their transaction's position,
which the migrations gave every transaction already written, in txid order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import asyncpg

from runtime import page_tokens
from runtime.db import Connection
from runtime.errors import InvalidArgument

CURSOR = re.compile(r"^p([0-9]{1,19})-([0-9]{1,19})\Z")
LEGACY_CURSOR = re.compile(r"^([0-9]{1,20})-([0-9]{1,19})\Z")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

# (position, seq) of an entry: the feed's order.
Position = tuple[int, int]
MAX_TXID = 2**64 - 1
MAX_BIGINT = 2**63 - 1
MAX_SEQ = MAX_BIGINT


class Legacy(tuple[int, int]):
    """A cursor of the first contract, (txid, seq): `resolve` turns it into a Position."""

    field: str

    def __new__(cls, txid: int, seq: int, field: str) -> Legacy:
        cursor = super().__new__(cls, (txid, seq))
        cursor.field = field
        return cursor


def parse_cursor(cursor: str, field: str = "after_cursor") -> Position | None:
    """The position a cursor names; a first-contract cursor as `Legacy` (see `resolve`)."""
    if not cursor:
        return None
    match = CURSOR.match(cursor)
    # The pattern bounds the digits; the values must also fit bigint (and xid8, for txids).
    if match and int(match[1]) <= MAX_BIGINT and int(match[2]) <= MAX_SEQ:
        return int(match[1]), int(match[2])
    legacy = LEGACY_CURSOR.match(cursor)
    if legacy and int(legacy[1]) <= MAX_TXID and int(legacy[2]) <= MAX_SEQ:
        return Legacy(int(legacy[1]), int(legacy[2]), field)
    raise InvalidArgument.field(field, "is not a cursor this feed returned")


def cursor_of(row: asyncpg.Record) -> str:
    """The cursor of a row read by `read_settled` or `last_position` (`position`, `seq`)."""
    return f"p{row['position']}-{row['seq']}"


def page_size(value: int, field: str) -> int:
    """A page or batch size: 0 means the default, else 1 to MAX_LIMIT."""
    return page_tokens.page_size(value, DEFAULT_LIMIT, MAX_LIMIT, field)


def positions_of(relation: str) -> str:
    """The positions relation beside a feed relation (`tagging.feed` -> `tagging.feed_positions`)."""
    return f"{relation}_positions"


async def resolve(conn: Connection, relation: str, after: Position | None) -> Position | None:
    """`after` as a position: a Legacy cursor becomes its transaction's position. A txid without
    one was not a cursor this feed returned."""
    if not isinstance(after, Legacy):
        return after
    position = await conn.fetchval(
        f"SELECT position FROM {positions_of(relation)} WHERE txid = $1::text::xid8", str(after[0])
    )
    if position is None:
        raise InvalidArgument.field(after.field, "is not a cursor this feed returned")
    return int(position), after[1]


async def last_settled(conn: Connection, relation: str) -> str | None:
    """The cursor of the newest readable entry of `relation`, None when it has none."""
    row = await conn.fetchrow(
        f"""SELECT p.position, l.seq FROM {positions_of(relation)} p
            CROSS JOIN LATERAL (SELECT f.seq FROM {relation} f WHERE f.txid = p.txid
                                ORDER BY f.seq DESC LIMIT 1) l
            ORDER BY p.position DESC LIMIT 1"""
    )
    return None if row is None else cursor_of(row)


async def read_settled(
    conn: Connection,
    relation: str,
    columns: str,
    after: Position | None,
    limit: int,
    where: str = "true",
    args: Sequence[Any] = (),
    upto: Position | None = None,
) -> list[asyncpg.Record]:
    """Readable rows of `relation` after `after`, in feed order: `columns` plus `position`,
    `txid` (text) and `seq`, none after `upto`. `where` (over the relation as `f`) may filter
    further with parameters `$4…` taken from `args`."""
    after = await resolve(conn, relation, after)
    n = 3 + len(args)
    bound = f"AND {{p}}.position <= ${n + 1}::bigint" if upto is not None else ""
    last = f"AND (w.position < ${n + 1}::bigint OR f.seq <= ${n + 2}::bigint)" if upto is not None else ""
    positions = positions_of(relation)
    # One transaction after another, in position order, as long as fewer than `limit` rows were
    # found: each step counts (at most `limit` of) its transaction's matching rows, so a read
    # looks at about as many rows as it returns, however big the transactions, and a filtered
    # read goes on over transactions without a match. Each transaction's rows are then read by
    # the (tenant, txid, seq) key, in seq order.
    rows = await conn.fetch(
        f"""WITH RECURSIVE walk(position, txid, after_seq, before) AS (
                (SELECT p.position, p.txid, CASE WHEN p.position = $2::bigint THEN $3::bigint ELSE 0 END,
                        0::bigint
                 FROM {positions} p WHERE p.position >= $2::bigint {bound.format(p="p")}
                 ORDER BY p.position LIMIT 1)
              UNION ALL
                SELECT q.position, q.txid, 0::bigint, w.before + c.found
                FROM walk w
                CROSS JOIN LATERAL (
                    SELECT count(*) AS found FROM (
                        SELECT 1 FROM {relation} f
                        WHERE f.txid = w.txid AND f.seq > w.after_seq AND {where} LIMIT $1) m) c
                CROSS JOIN LATERAL (
                    SELECT q.position, q.txid FROM {positions} q
                    WHERE q.position > w.position {bound.format(p="q")}
                    ORDER BY q.position LIMIT 1) q
                WHERE w.before + c.found < $1)
            SELECT e.* FROM walk w CROSS JOIN LATERAL (
                SELECT {columns}, w.position, f.txid::text AS txid, f.seq FROM {relation} f
                WHERE f.txid = w.txid AND f.seq > w.after_seq AND {where} {last}
                ORDER BY f.seq LIMIT $1) e
            ORDER BY e.position, e.seq LIMIT $1""",
        limit,
        0 if after is None else after[0],
        0 if after is None else after[1],
        *args,
        *(() if upto is None else upto),
    )
    return list(rows)
