"""Snapshots and splits: an audience's members frozen for a campaign, each in a named arm.

A snapshot is one set-based statement: the compiled audience, evaluated now (or the member ids the
tenant's bitmaps selected), inserted with each member's arm. The arm comes from md5(salt:member_id)
modulo 10000 against the arms' cumulative shares, so it is deterministic, reproducible outside the
database, and fixed once stored. The request id is the idempotency key (a unique constraint): a
retry returns the first snapshot.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from runtime import page_tokens
from runtime.buckets import BUCKETS, bucket_sql
from runtime.db import Database
from runtime.errors import AlreadyExists, InvalidArgument, NotFound, Violations
from services.audience import store
from services.audience.evaluation import Evaluator

ARM_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")
SNAPSHOT_ID = re.compile(r"^[0-9a-f]{32}\Z")
NAME_PREFIX = "snapshots/"
MAX_ARMS = 20
MAX_REQUEST_ID = 128
DEFAULT_ARMS = (("all", 100),)
DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 10_000
DEFAULT_LIST_SIZE = 100
MAX_LIST_SIZE = 1000
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _insert_members(param: Callable[[int], str], members: str) -> str:
    """Inserts the members `s` of `members` with their arms; the tenant, snapshot, salt and arms'
    lowest buckets are the placeholders `param(1)` to `param(4)`."""
    arm = f"width_bucket({bucket_sql(f'{param(3)}::text', 's.member_id')}, {param(4)}::bigint[]) - 1"
    return f"""INSERT INTO audience.snapshot_members (tenant_id, snapshot_id, member_id, arm)
               SELECT {param(1)}::text, {param(2)}::text, s.member_id, {arm} FROM {members}"""


@dataclass(frozen=True)
class Arm:
    name: str
    share_percent: int
    member_count: int = 0


@dataclass(frozen=True)
class MembersPage:
    """Member ids in id order with the name of each one's arm, and the next page's token."""

    member_ids: list[str]
    arms: list[str]
    next_page_token: str


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: str
    request_id: str
    audience_id: str
    audience_version: int
    salt: str
    arms: tuple[Arm, ...]
    member_count: int
    create_time: dt.datetime


def snapshot_id_from_name(name: str, path: str) -> str:
    snapshot_id = name.removeprefix(NAME_PREFIX)
    if not name.startswith(NAME_PREFIX) or not SNAPSHOT_ID.match(snapshot_id):
        raise InvalidArgument.field(path, "must be a resource name of the form snapshots/{snapshot_id}")
    return snapshot_id


def validate_arms(arms: Sequence[tuple[str, int]], request_id: str) -> tuple[tuple[str, int], ...]:
    v = Violations()
    if not 1 <= len(request_id) <= MAX_REQUEST_ID:
        v.add("request_id", f"is required: 1-{MAX_REQUEST_ID} characters, the idempotency key")
    if len(arms) > MAX_ARMS:
        v.add("splits", f"at most {MAX_ARMS} arms")
    seen: set[str] = set()
    for i, (name, share) in enumerate(arms[:MAX_ARMS]):
        if not ARM_NAME.match(name):
            v.add(f"splits[{i}].name", "must be 1-32 characters: a lower-case letter, then a-z, 0-9, _ or -")
        elif name in seen:
            v.add(f"splits[{i}].name", "appears twice")
        seen.add(name)
        if not 1 <= share <= 100:
            v.add(f"splits[{i}].share_percent", "must be between 1 and 100")
    if arms and not v and sum(share for _, share in arms) != 100:
        v.add("splits", f"shares must sum to 100 %, not {sum(share for _, share in arms)} %")
    v.raise_if_any()
    return tuple(arms) or DEFAULT_ARMS


def _content_hash(audience_id: str, arms: Sequence[tuple[str, int]]) -> str:
    body = json.dumps({"audience": audience_id, "arms": [list(arm) for arm in arms]}, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def _snapshot(row: Any) -> Snapshot:
    arms = tuple(
        Arm(a["name"], a["share_percent"], a.get("member_count", 0)) for a in json.loads(row["arms"])
    )
    return Snapshot(
        snapshot_id=row["snapshot_id"],
        request_id=row["request_id"],
        audience_id=row["audience_id"],
        audience_version=row["audience_version"],
        salt=row["salt"],
        arms=arms,
        member_count=row["member_count"],
        create_time=row["create_time"],
    )


class Snapshots:
    def __init__(self, db: Database, evaluator: Evaluator) -> None:
        self._db = db
        self._evaluator = evaluator

    async def create(
        self,
        tenant_id: str,
        audience_id: str,
        arms: Sequence[tuple[str, int]],
        request_id: str,
        now: dt.datetime,
    ) -> Snapshot:
        chosen = validate_arms(arms, request_id)
        digest = _content_hash(audience_id, chosen)
        snapshot_id, salt = uuid.uuid4().hex, secrets.token_hex(8)
        bitmaps = await self._evaluator.bitmaps_now(tenant_id)
        async with self._evaluator.transaction(tenant_id, readonly=False) as conn:
            loaded = await self._evaluator.load(
                conn, tenant_id, audience_id, None, filtered=False, now=now, drive=False
            )
            body = json.dumps([{"name": name, "share_percent": share} for name, share in chosen])
            inserted = await store.insert_snapshot(
                conn, tenant_id, snapshot_id, request_id, audience_id, loaded.version, salt, body, digest
            )
            if not inserted:
                first = await store.snapshot_by_request(conn, request_id)
                assert first is not None
                if first["content_hash"] != digest:
                    raise AlreadyExists(f"request_id {request_id!r} made another snapshot (other content)")
                return _snapshot(first)
            # Each arm's lowest bucket: width_bucket() numbers the arm a bucket falls in from 1.
            lower, total = [], 0
            for _, share in chosen:
                lower.append(total)
                total += share * BUCKETS // 100
            placed = (tenant_id, snapshot_id, salt, lower)
            ids = await self._evaluator.selected_ids(conn, bitmaps, loaded, now)
            if ids is not None:
                sql = _insert_members(lambda n: f"${n + 1}", "unnest($1::text[]) AS s(member_id)")
                await conn.execute(sql, ids, *placed)
            else:
                c = (await self._evaluator.driven(conn, loaded, now)).compiled
                sql = _insert_members(c.next_param, f"({c.members_sql()}) AS s")
                await conn.execute(sql, *c.args(now), *placed)
            counts = await store.arm_counts(conn, snapshot_id)
            sized = [
                {"name": name, "share_percent": share, "member_count": counts.get(i, 0)}
                for i, (name, share) in enumerate(chosen)
            ]
            await store.size_snapshot(conn, snapshot_id, json.dumps(sized), sum(counts.values()))
            row = await store.get_snapshot(conn, snapshot_id)
        assert row is not None
        return _snapshot(row)

    async def get(self, tenant_id: str, snapshot_id: str) -> Snapshot:
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            row = await store.get_snapshot(conn, snapshot_id)
        if row is None:
            raise NotFound(f"snapshots/{snapshot_id} not found")
        return _snapshot(row)

    async def assignment(self, tenant_id: str, snapshot_id: str, member_id: str) -> str | None:
        """The member's arm, or None when the member is not in the snapshot."""
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            row = await store.get_snapshot(conn, snapshot_id)
            if row is None:
                raise NotFound(f"snapshots/{snapshot_id} not found")
            arm = await store.member_arm(conn, snapshot_id, member_id)
        if arm is None:
            return None
        return str(json.loads(row["arms"])[arm]["name"])

    async def list_page(
        self, tenant_id: str, audience_id: str, page_size: int, page_token: str
    ) -> tuple[list[Snapshot], str]:
        """One page of the audience's snapshots, newest first. The token names the audience."""
        size = page_tokens.page_size(page_size, DEFAULT_LIST_SIZE, MAX_LIST_SIZE)
        scope = f"audiences/{audience_id}/snapshots"
        keys = page_tokens.decode(page_token, scope, (int, str))
        after = (int(keys[0]), str(keys[1])) if keys is not None else None
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            if await store.get_audience(conn, audience_id, 1, include_deleted=True) is None:
                raise NotFound(f"audiences/{audience_id} not found")
            rows = await store.list_snapshots(conn, audience_id, after, size + 1)
        page = [_snapshot(row) for row in rows[:size]]
        last = page[-1] if len(rows) > size else None
        token = page_tokens.encode(scope, _microseconds(last.create_time), last.snapshot_id) if last else ""
        return page, token

    async def members_page(
        self, tenant_id: str, snapshot_id: str, page_size: int, page_token: str
    ) -> MembersPage:
        """One page of the snapshot's members by member id. The token names the snapshot it pages
        through, so a token of another snapshot is refused rather than silently misread."""
        v = Violations()
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            v.add("page_size", f"must be between 1 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})")
        after = _decode_page_token(page_token, snapshot_id, v)
        v.raise_if_any()
        size = page_size or DEFAULT_PAGE_SIZE
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            row = await store.get_snapshot(conn, snapshot_id)
            if row is None:
                raise NotFound(f"snapshots/{snapshot_id} not found")
            rows = await store.snapshot_members_after(conn, snapshot_id, after, size + 1)
        names = [arm["name"] for arm in json.loads(row["arms"])]
        page = rows[:size]
        token = _encode_page_token(snapshot_id, page[-1]["member_id"]) if len(rows) > size else ""
        return MembersPage([r["member_id"] for r in page], [names[r["arm"]] for r in page], token)


def _microseconds(moment: dt.datetime) -> int:
    return (moment - EPOCH) // dt.timedelta(microseconds=1)


def _encode_page_token(snapshot_id: str, after: str) -> str:
    return page_tokens.encode(f"snapshots/{snapshot_id}/members", after)


def _decode_page_token(token: str, snapshot_id: str, v: Violations) -> str:
    """The member id a page starts after ('' for the first page)."""
    try:
        return page_tokens.decode_one(token, f"snapshots/{snapshot_id}/members", str) or ""
    except InvalidArgument:
        v.add("page_token", "is not a token this list returned for this snapshot")
        return ""
