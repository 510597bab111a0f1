"""The feed contract every service's outbox follows (tagging's feed, audience's feed).

Entries are rows keyed by `(txid, seq)`: the writing transaction's id and a sequence. A reader is
handed an entry only once its transaction is older than every transaction still running
(`SETTLED`), so no entry can later appear behind a cursor a consumer already holds. A cursor is
`<txid>-<seq>` of the last entry read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import asyncpg

from runtime import page_tokens
from runtime.db import Connection
from runtime.errors import InvalidArgument

CURSOR = re.compile(r"^([0-9]{1,20})-([0-9]{1,19})\Z")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Only entries of transactions older than every running one: nothing can still commit before them.
SETTLED = "txid < pg_snapshot_xmin(pg_current_snapshot())"

Position = tuple[int, int]
MAX_TXID = 2**64 - 1
MAX_SEQ = 2**63 - 1


def parse_cursor(cursor: str, field: str = "after_cursor") -> Position | None:
    if not cursor:
        return None
    match = CURSOR.match(cursor)
    # The pattern bounds the digits; the values must also fit xid8 (unsigned 64 bits) and bigint.
    if not match or int(match[1]) > MAX_TXID or int(match[2]) > MAX_SEQ:
        raise InvalidArgument.field(field, "is not a cursor this feed returned")
    return int(match[1]), int(match[2])


def cursor_of(row: asyncpg.Record) -> str:
    """The cursor of a row read by `read_settled` (which selects `txid` as text)."""
    return f"{row['txid']}-{row['seq']}"


def page_size(value: int, field: str) -> int:
    """A page or batch size: 0 means the default, else 1 to MAX_LIMIT."""
    return page_tokens.page_size(value, DEFAULT_LIMIT, MAX_LIMIT, field)


async def last_settled(conn: Connection, relation: str) -> str | None:
    """The cursor of the newest settled entry of `relation`, None when it has none."""
    # The order names the relation's columns: a bare `txid` would be the output column, the text
    # cast, and "999" sorts after "1000" (so would the whole index go unused).
    row = await conn.fetchrow(
        f"""SELECT f.txid::text AS txid, f.seq FROM {relation} f WHERE {SETTLED}
            ORDER BY f.txid DESC, f.seq DESC LIMIT 1"""
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
) -> list[asyncpg.Record]:
    """Settled rows of `relation` after `after`, in feed order: `columns` plus `txid` (text), `seq`.
    `where` may filter further with parameters `$4…` taken from `args`."""
    # Two shapes rather than `$1 IS NULL OR …`, so each reads the (tenant, txid, seq) key as a range.
    position = (
        "(txid, seq) > ($2::text::xid8, $3::bigint)"
        if after is not None
        else "$2::text IS NULL AND $3::bigint = 0"
    )
    return list(
        await conn.fetch(
            f"""SELECT {columns}, f.txid::text AS txid, f.seq FROM {relation} f
                WHERE {SETTLED} AND {position} AND {where}
                ORDER BY f.txid, f.seq LIMIT $1""",
            limit,
            None if after is None else str(after[0]),
            0 if after is None else after[1],
            *args,
        )
    )
