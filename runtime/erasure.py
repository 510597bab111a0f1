"""Erasing a member from one service's schema (PIPL / GDPR), the part every service shares.

Tagging's EraseMember picks a fresh pseudonym and asks each peer's EraseMemberData to move the
member's rows to it: the business keeps its figures (balances, GMV, arms, funnels) without an
identity. Each service lists its own statements (SQL with `$1` the member id and `$2` the
pseudonym) and runs them here in one transaction, after a transaction lock on the member, so two
erasures of one member run one after the other and the second finds nothing left: an erasure is
idempotent because every statement matches only rows still under the member's id.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from runtime import checks
from runtime.db import Connection, Database
from runtime.errors import Violations

# A pseudonym says what it is, so a caller cannot merge one real member into another.
PSEUDONYM_PREFIX = "erased-"
# What replaces free text that may name the member (an operator's note, a provider's answer).
ERASED_TEXT = "[erased]"


@dataclass(frozen=True)
class Erasure:
    member_id: str
    pseudonym: str


def checked(member_id: str, pseudonym: str) -> Erasure:
    """The request's two ids, or INVALID_ARGUMENT naming each bad field. Both become member ids in
    the service's tables, so both follow tagging's rule for member ids."""
    v = Violations()
    if not member_id:
        v.add("member_id", "is required")
    else:
        checks.natural_id(member_id, v, "member_id")
    if not pseudonym:
        v.add("pseudonym", "is required")
    elif not pseudonym.startswith(PSEUDONYM_PREFIX) or len(pseudonym) == len(PSEUDONYM_PREFIX):
        v.add("pseudonym", f"must start with {PSEUDONYM_PREFIX!r} and go on")
    else:
        checks.natural_id(pseudonym, v, "pseudonym")
    if member_id and member_id == pseudonym:
        v.add("pseudonym", "must differ from member_id")
    v.raise_if_any()
    return Erasure(member_id, pseudonym)


@dataclass(frozen=True)
class Statement:
    """One write of an erasure: `table` is what its changed rows are counted under; a statement
    that only prepares another (a row the next one needs) is not `counted`."""

    table: str
    sql: str
    counted: bool = True


def moved(table: str, *, key: Sequence[str] | None = None, also: str = "") -> tuple[Statement, ...]:
    """The member's rows of `table` (schema-qualified) under the pseudonym, counted under its name.
    `key`: the columns beside the tenant and the member of a unique key that holds the member; a
    row the pseudonym already has under that key (a consumer met the pseudonym, which tagging
    erased first, before this erasure ran) is derived from the same facts and gives way to the
    member's older one. `also`: more assignments (`, col = ...`)."""
    name = table.rsplit(".", 1)[-1]
    update = Statement(name, f"UPDATE {table} SET member_id = $2{also} WHERE member_id = $1")
    if key is None:
        return (update,)
    same = "".join(f" AND o.{column} = p.{column}" for column in key)
    give_way = Statement(
        name,
        f"""DELETE FROM {table} AS p USING {table} AS o
            WHERE p.member_id = $2 AND o.member_id = $1 AND o.tenant_id = p.tenant_id{same}""",
    )
    return (give_way, update)


async def run(
    conn: Connection, service: str, erasure: Erasure, statements: Sequence[Statement]
) -> dict[str, int]:
    """Takes the member's erasure lock in `service` (under the transaction's tenant), then runs the
    statements in order; the rows each changed, by table (tables with none left out)."""
    await conn.execute(
        """SELECT pg_advisory_xact_lock(hashtextextended(concat_ws(
               chr(31), 'erase', $1::text, current_setting('memberops.tenant_id'), $2::text), 0))""",
        service,
        erasure.member_id,
    )
    counts: dict[str, int] = {}
    for statement in statements:
        # A statement that only removes (the member's last rows) names no pseudonym.
        args = (erasure.member_id, erasure.pseudonym) if "$2" in statement.sql else (erasure.member_id,)
        status = await conn.execute(statement.sql, *args)
        changed = int(status.rsplit(" ", 1)[-1])
        if changed and statement.counted:
            counts[statement.table] = counts.get(statement.table, 0) + changed
    return counts


# A service's erasure inside its transaction: the rows changed, by table.
Store = Callable[[Connection, Erasure], Awaitable[dict[str, int]]]


class Erasures:
    """A service's EraseMemberData: the request checked, then the service's `store` in one
    transaction under the caller's tenant."""

    def __init__(self, db: Database, store: Store, forget: Callable[[str, str], None] | None = None) -> None:
        self._db = db
        self._store = store
        # Drops (tenant, member) from a process's cache of members known to exist, so a later
        # write for the erased id asks tagging again (and finds no such member).
        self._forget = forget

    async def erase(self, tenant_id: str, member_id: str, pseudonym: str) -> dict[str, int]:
        """The rows changed, by table; nothing when the member has nothing left here."""
        erasure = checked(member_id, pseudonym)
        async with self._db.transaction(tenant_id) as conn:
            changed = await self._store(conn, erasure)
        if self._forget is not None:
            self._forget(tenant_id, member_id)
        return changed
