"""Badges: defined by their natural key, held by members once each.

A badge is awarded in the transaction of what earned it: a task's completion (`Task.badge`, on the
member's first completion; later ones find it held) or the sign-in that reaches a streak milestone
(`SignInSpec.milestones`). A taken-back completion leaves the badge: it says the member got there
once. Tasks may name only badges that exist when they are defined, and badges are never deleted.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass

from runtime import page_tokens
from runtime.db import Connection, Database
from runtime.errors import AlreadyExists, Violations
from services.tasks.badges import badge_store
from services.tasks.badges.badge_store import BadgeRow, MemberBadgeRow
from services.tasks.points import ledger

BADGE_ID = re.compile(r"^[a-z][a-z0-9_-]{0,62}\Z")
MAX_DISPLAY_NAME = 64
MAX_DESCRIPTION = 1024


@dataclass(frozen=True)
class BadgeDefinition:
    badge_id: str
    display_name: str
    description: str = ""


def validate(d: BadgeDefinition) -> None:
    v = Violations()
    if not BADGE_ID.match(d.badge_id):
        v.add("badge.badge_id", "must be 1-63 characters: a lower-case letter, then a-z, 0-9, _ or -")
    if not 1 <= len(d.display_name) <= MAX_DISPLAY_NAME:
        v.add("badge.display_name", f"must be 1-{MAX_DISPLAY_NAME} characters")
    if len(d.description) > MAX_DESCRIPTION:
        v.add("badge.description", f"must be at most {MAX_DESCRIPTION} characters")
    v.raise_if_any()


def badge_id_of(name: str) -> str | None:
    """The id in `badges/{badge_id}`; None when `name` is not of that form."""
    badge_id = name.removeprefix("badges/")
    return badge_id if name.startswith("badges/") and BADGE_ID.match(badge_id) else None


def check_name(v: Violations, path: str, name: str) -> None:
    if badge_id_of(name) is None:
        v.add(path, "must be a resource name of the form badges/{badge_id}")


async def check_exist(conn: Connection, names: Mapping[str, str]) -> None:
    """INVALID_ARGUMENT naming each path (of `names`: path to `badges/{id}`) whose badge does not
    exist."""
    ids = {path: badge_id_of(name) or "" for path, name in names.items()}
    found = await badge_store.existing(conn, sorted(set(ids.values())))
    v = Violations()
    for path, badge_id in ids.items():
        if badge_id not in found:
            v.add(path, f"badges/{badge_id} does not exist")
    v.raise_if_any()


async def award(
    conn: Connection, tenant_id: str, member_id: str, names: list[str], source: str, at: dt.datetime
) -> None:
    """Awards the badges (`badges/{id}`) the member does not hold yet, in the caller's transaction."""
    ids = [badge_id for badge_id in map(badge_id_of, names) if badge_id is not None]
    if ids:
        await badge_store.award(conn, tenant_id, member_id, ids, source, at)


class Badges:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, tenant_id: str, d: BadgeDefinition) -> BadgeRow:
        """The badge; the same content again returns it, other content is ALREADY_EXISTS."""
        validate(d)
        async with self._db.transaction(tenant_id) as conn:
            await badge_store.insert_badge(conn, tenant_id, d.badge_id, d.display_name, d.description)
            row = await badge_store.badge(conn, d.badge_id)
        assert row is not None
        if (row.display_name, row.description) != (d.display_name, d.description):
            raise AlreadyExists(f"badges/{d.badge_id} exists with other content")
        return row

    async def list_page(self, tenant_id: str, size: int, token: str) -> tuple[list[BadgeRow], str]:
        limit = ledger.page_size(size)
        after = page_tokens.decode_one(token, "badges", str) or ""
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            rows = await badge_store.badges(conn, after, limit + 1)
        page = rows[:limit]
        return page, page_tokens.encode("badges", page[-1].badge_id) if len(rows) > limit else ""

    async def of_member(self, tenant_id: str, member_id: str) -> list[MemberBadgeRow]:
        v = Violations()
        ledger.check_member_id(v, "member_id", member_id)
        v.raise_if_any()
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            return await badge_store.member_badges(conn, member_id)
