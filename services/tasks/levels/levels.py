"""Membership levels by growth value: the points a member earned in a rolling window (tasks and
orders, net of their reversals; never the balance, so spending does not cost a level).

Upgrades happen at once: the ledger's earning function raises the level in the earning's own
transaction (`tasks.raise_level`, see services/tasks/migrations/README.md). Downgrades happen only
at the end of an evaluation period, after a grace period: `EvaluateLevels(as_of)` takes the latest
period end E whose grace has passed at `as_of`, and every member who held a level above the base
through E is set to the tier their growth supports at E + grace (the moment the downgrade takes
effect, so a late run decides as an on-time one would), unless growth at `as_of` supports more. Each
member records the period end they were reviewed for, so a second run changes nothing. Every change
is an entry of the tasks feed, written in the same transaction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runtime import outbox, zones
from runtime.db import Connection, Database
from runtime.errors import Aborted, InvalidArgument, Violations
from services.tasks import time_span
from services.tasks.coupons import template_store
from services.tasks.levels import level_store, tasks_feed_store
from services.tasks.points import ledger

CODE = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")
MIN_TIERS, MAX_TIERS = 2, 10
MAX_GROWTH = 10**12
MAX_DISPLAY_NAME = 64
PERIOD_MONTHS = (1, 2, 3, 4, 6, 12)
MIN_MULTIPLIER, MAX_MULTIPLIER = 100, 1000
TEMPLATE_PREFIX = "couponTemplates/"
TEMPLATE_ID = re.compile(r"^[a-z][a-z0-9_-]{0,62}\Z")
BATCH = 500
LEVEL_CHANGED = 1


@dataclass(frozen=True)
class Benefits:
    """What a level gives its members: an order points multiplier (0 means 100) and coupons by
    template resource name (`couponTemplates/{id}`, '' for none)."""

    points_multiplier_percent: int = 0
    monthly_coupon_template: str = ""
    birthday_coupon_template: str = ""


NO_BENEFITS = Benefits()


@dataclass(frozen=True)
class Tier:
    code: str
    display_name: str
    min_growth: int
    benefits: Benefits = NO_BENEFITS

    def content(self) -> dict[str, Any]:
        """The tier as stored; benefits only when it has some, so policies stored before levels
        had benefits keep their content hash."""
        body = dataclasses.asdict(self)
        if self.benefits == NO_BENEFITS:
            del body["benefits"]
        return body


@dataclass(frozen=True)
class Policy:
    tiers: tuple[Tier, ...]
    window_days: int
    period_months: int
    grace_days: int
    time_zone: str = ""
    version: int = 0
    update_time: dt.datetime | None = None

    @property
    def zone(self) -> dt.tzinfo:
        return zones.zone(self.time_zone, Violations(), "time_zone")

    @property
    def window(self) -> dt.timedelta:
        return dt.timedelta(days=self.window_days)

    @property
    def grace(self) -> dt.timedelta:
        return dt.timedelta(days=self.grace_days)

    def rank_for(self, growth: int) -> int:
        """The highest tier whose threshold the growth reaches."""
        return max(i for i, tier in enumerate(self.tiers) if tier.min_growth <= growth)

    def rank_of(self, code: str) -> int:
        return next(i for i, tier in enumerate(self.tiers) if tier.code == code)

    def content(self) -> dict[str, Any]:
        return {
            "tiers": [t.content() for t in self.tiers],
            "window_days": self.window_days,
            "period_months": self.period_months,
            "grace_days": self.grace_days,
            "time_zone": self.time_zone,
        }

    def content_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.content(), sort_keys=True).encode()).hexdigest()


DEFAULT_POLICY = Policy(
    tiers=(Tier("bronze", "Bronze", 0), Tier("silver", "Silver", 1_000), Tier("gold", "Gold", 5_000)),
    window_days=365,
    period_months=1,
    grace_days=7,
)


@dataclass(frozen=True)
class MemberLevel:
    member_id: str
    level: str
    growth: int
    since: dt.datetime | None
    next_level: str
    growth_to_next: int
    qualified_level: str
    review_time: dt.datetime | None


@dataclass(frozen=True)
class Evaluation:
    period_end: dt.datetime
    evaluated: int = 0
    upgraded: int = 0
    downgraded: int = 0


@dataclass(frozen=True)
class FeedEntry:
    cursor: str
    member_id: str
    from_level: str
    to_level: str
    upgrade: bool
    growth: int
    create_time: dt.datetime


# --- rules ---------------------------------------------------------------------------------------


def _tiers(tiers: Sequence[Tier], current: Policy | None, v: Violations) -> None:
    if not MIN_TIERS <= len(tiers) <= MAX_TIERS:
        v.add("policy.tiers", f"must hold {MIN_TIERS}-{MAX_TIERS} tiers")
    for i, tier in enumerate(tiers):
        path = f"policy.tiers[{i}]"
        if not CODE.match(tier.code):
            v.add(f"{path}.code", "must be 1-32 characters: a lower-case letter, then a-z, 0-9, _ or -")
        if len(tier.display_name) > MAX_DISPLAY_NAME:
            v.add(f"{path}.display_name", f"must be at most {MAX_DISPLAY_NAME} characters")
        if not 0 <= tier.min_growth <= MAX_GROWTH:
            v.add(f"{path}.min_growth", f"must be 0 to {MAX_GROWTH:,}")
        elif i == 0 and tier.min_growth != 0:
            v.add(f"{path}.min_growth", "must be 0: the first tier is the base level everyone holds")
        elif i > 0 and tier.min_growth <= tiers[i - 1].min_growth:
            v.add(f"{path}.min_growth", "must be above the previous tier's")
        _benefits(tier.benefits, f"{path}.benefits", v)
    if len({t.code for t in tiers}) != len(tiers):
        v.add("policy.tiers", "codes must be distinct")
    elif current is not None:
        kept = [t.code for t in tiers if t.code in {c.code for c in current.tiers}]
        if kept != [t.code for t in current.tiers]:
            v.add("policy.tiers", "must keep every current code, in its order (members may hold them)")


def _benefits(benefits: Benefits, path: str, v: Violations) -> None:
    multiplier = benefits.points_multiplier_percent
    if multiplier != 0 and not MIN_MULTIPLIER <= multiplier <= MAX_MULTIPLIER:
        v.add(f"{path}.points_multiplier_percent", f"must be 0 (100) or {MIN_MULTIPLIER}-{MAX_MULTIPLIER}")
    for name, value in (
        ("monthly_coupon_template", benefits.monthly_coupon_template),
        ("birthday_coupon_template", benefits.birthday_coupon_template),
    ):
        if value and coupon_template_id(value) is None:
            v.add(f"{path}.{name}", "must be a resource name of the form couponTemplates/{template_id}")


def coupon_template_id(name: str) -> str | None:
    """The template id of a `couponTemplates/{id}` name; None for anything else."""
    template_id = name.removeprefix(TEMPLATE_PREFIX)
    return template_id if name.startswith(TEMPLATE_PREFIX) and TEMPLATE_ID.match(template_id) else None


def validate(policy: Policy, current: Policy | None) -> None:
    """Violations name `policy.…`; the current tiers' codes must stay, in their order."""
    v = Violations()
    _tiers(policy.tiers, current, v)
    if not 1 <= policy.window_days <= ledger.MAX_EXPIRY_DAYS:
        v.add("policy.window_days", "must be 1-3650")
    if policy.period_months not in PERIOD_MONTHS:
        v.add("policy.evaluation_period_months", "must be 1, 2, 3, 4, 6 or 12")
    if not 0 <= policy.grace_days <= 365:
        v.add("policy.grace_days", "must be 0-365")
    zones.zone(policy.time_zone, v, "policy.time_zone")
    v.raise_if_any()


def period_start(at: dt.datetime, months: int, zone: dt.tzinfo) -> dt.datetime:
    """The start of the evaluation period holding `at`: periods of `months` from January, in `zone`."""
    local = at.astimezone(zone)
    first_month = (local.month - 1) // months * months + 1
    return zones.day_start(dt.date(local.year, first_month, 1), zone)


def next_period_start(at: dt.datetime, months: int, zone: dt.tzinfo) -> dt.datetime:
    start = period_start(at, months, zone).astimezone(zone)
    index = start.month - 1 + months
    return zones.day_start(dt.date(start.year + index // 12, index % 12 + 1, 1), zone)


def review_boundary(policy: Policy, as_of: dt.datetime) -> dt.datetime:
    """The latest period end whose grace period has passed at `as_of`."""
    return period_start(as_of - policy.grace, policy.period_months, policy.zone)


def decide(held: int, since: dt.datetime, period_end: dt.datetime, at_review: int, now: int) -> int:
    """The rank after reviewing `period_end`: a member who held their rank through it drops to what
    growth supported when the grace ended; growth now may lift anyone at once."""
    rank = min(held, at_review) if since <= period_end else held
    return max(rank, now)


def review_time(policy: Policy, since: dt.datetime | None, now: dt.datetime) -> dt.datetime:
    """When a member below their level would be downgraded: at the end of this period's grace if
    they held the level through its start and it has not passed, else after the next period's."""
    zone = policy.zone
    start = period_start(now, policy.period_months, zone)
    if now < start + policy.grace and (since is None or since <= start):
        return start + policy.grace
    return next_period_start(now, policy.period_months, zone) + policy.grace


# --- the service ---------------------------------------------------------------------------------


async def seed(db: Database, tenants: frozenset[str]) -> None:
    """Gives every configured tenant the default policy when it has none (kept if it has one), so
    upgrades work from the first earning."""
    for tenant_id in sorted(tenants):
        async with db.transaction(tenant_id) as conn:
            await _ensure_default(conn, tenant_id)


async def _ensure_default(conn: Connection, tenant_id: str) -> None:
    await level_store.ensure_policy(conn, tenant_id, DEFAULT_POLICY.content(), DEFAULT_POLICY.content_hash())


async def _stored(conn: Connection, *, lock: bool = False) -> Policy | None:
    found = await level_store.policy(conn, lock=lock)
    if found is None:
        return None
    row, tiers = found
    return Policy(
        tiers=tuple(
            Tier(
                t["code"],
                t["display_name"],
                t["min_growth"],
                Benefits(
                    t["points_multiplier_percent"],
                    t["monthly_coupon_template"],
                    t["birthday_coupon_template"],
                ),
            )
            for t in tiers
        ),
        window_days=row["window_days"],
        period_months=row["period_months"],
        grace_days=row["grace_days"],
        time_zone=row["time_zone"],
        version=row["version"],
        update_time=row["update_time"],
    )


async def _templates_exist(conn: Connection, policy: Policy) -> None:
    """INVALID_ARGUMENT naming each benefit whose coupon template does not exist."""
    v = Violations()
    for i, tier in enumerate(policy.tiers):
        b = tier.benefits
        for name, value in (
            ("monthly_coupon_template", b.monthly_coupon_template),
            ("birthday_coupon_template", b.birthday_coupon_template),
        ):
            template_id = coupon_template_id(value)
            if template_id is not None and await template_store.template(conn, template_id) is None:
                v.add(f"policy.tiers[{i}].benefits.{name}", f"{value} does not exist")
    v.raise_if_any()


class Levels:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def policy(self, tenant_id: str) -> Policy:
        async with self._db.transaction(tenant_id) as conn:
            return await self._policy(conn, tenant_id)

    async def _policy(self, conn: Connection, tenant_id: str, *, lock: bool = False) -> Policy:
        found = await _stored(conn, lock=lock)
        if found is None:
            await _ensure_default(conn, tenant_id)
            found = await _stored(conn, lock=lock)
        assert found is not None
        return found

    async def update_policy(self, tenant_id: str, policy: Policy, expected_version: int) -> Policy:
        if expected_version < 0:
            raise InvalidArgument.field("expected_version", "must be 0 (any) or a version number")
        async with self._db.transaction(tenant_id) as conn:
            current = await self._policy(conn, tenant_id, lock=True)
            validate(policy, None)
            digest = policy.content_hash()
            if digest == current.content_hash():
                return current
            if expected_version and expected_version != current.version:
                raise Aborted(f"the level policy is at version {current.version}, not {expected_version}")
            validate(policy, current)
            await _templates_exist(conn, policy)
            await level_store.replace_policy(conn, tenant_id, policy.content(), current.version + 1, digest)
            updated = await _stored(conn)
        assert updated is not None
        return updated

    async def member_level(self, tenant_id: str, member_id: str, now: dt.datetime) -> MemberLevel:
        v = Violations()
        ledger.check_member_id(v, "member_id", member_id)
        v.raise_if_any()
        async with self._db.transaction(tenant_id) as conn:
            policy = await self._policy(conn, tenant_id)
            held = await level_store.held(conn, member_id)
            growth = (await level_store.growths(conn, [member_id], [(now - policy.window, now)])).get(
                member_id, (0,)
            )[0]
        code, since = held if held is not None else (policy.tiers[0].code, None)
        rank = policy.rank_of(code) if code in {t.code for t in policy.tiers} else 0
        qualified = policy.rank_for(growth)
        following = policy.tiers[rank + 1] if rank + 1 < len(policy.tiers) else None
        at_risk = qualified < rank
        return MemberLevel(
            member_id=member_id,
            level=code,
            growth=growth,
            since=since,
            next_level=following.code if following else "",
            growth_to_next=max(following.min_growth - growth, 0) if following else 0,
            qualified_level=policy.tiers[qualified].code if at_risk else "",
            review_time=review_time(policy, since, now) if at_risk else None,
        )

    async def evaluate(self, tenant_id: str, asked: dt.datetime | None, now: dt.datetime) -> Evaluation:
        """Reviews the members due for the latest period end, then raises those whose growth at
        `as_of` (`asked`, default `now`; never ahead of it: a downgrade is published at once)
        supports more, BATCH members a transaction."""
        v = Violations()
        as_of = time_span.as_of(asked, now, v)
        v.raise_if_any()
        async with self._db.transaction(tenant_id) as conn:
            policy = await self._policy(conn, tenant_id)
        boundary = review_boundary(policy, as_of)
        evaluated = upgraded = downgraded = 0
        for due in (level_store.review_due, level_store.upgrade_due):
            after = ""
            while True:
                async with self._db.transaction(tenant_id) as conn:
                    members = await due(conn, boundary, as_of - policy.window, as_of, after, BATCH)
                    if not members:
                        break
                    up, down = await self._apply(conn, tenant_id, policy, members, boundary, as_of)
                evaluated, upgraded, downgraded = evaluated + len(members), upgraded + up, downgraded + down
                after = members[-1]
        return Evaluation(boundary, evaluated, upgraded, downgraded)

    async def _apply(
        self,
        conn: Connection,
        tenant_id: str,
        policy: Policy,
        members: Sequence[str],
        boundary: dt.datetime,
        as_of: dt.datetime,
    ) -> tuple[int, int]:
        held = await level_store.lock_levels(conn, members)
        review_end = boundary + policy.grace
        windows = [(review_end - policy.window, review_end), (as_of - policy.window, as_of)]
        growth = await level_store.growths(conn, members, windows)
        up = down = 0
        for member_id in members:
            code, since, reviewed = held.get(member_id, (policy.tiers[0].code, as_of, None))
            rank = policy.rank_of(code) if code in {t.code for t in policy.tiers} else 0
            at_review, now = (policy.rank_for(g) for g in growth.get(member_id, (0, 0)))
            due = reviewed is None or reviewed < boundary
            new = decide(rank, since, boundary, at_review, now) if due else max(rank, now)
            if new != rank:
                upgrade = new > rank
                up, down = up + upgrade, down + (not upgrade)
                await level_store.set_level(
                    conn, tenant_id, member_id, policy.tiers[new].code, as_of, boundary
                )
                await tasks_feed_store.append_change(
                    conn,
                    tenant_id,
                    member_id,
                    {
                        "from_level": code,
                        "to_level": policy.tiers[new].code,
                        "upgrade": upgrade,
                        "growth": growth.get(member_id, (0, 0))[1 if upgrade else 0],
                    },
                )
        await level_store.mark_reviewed(conn, [m for m in members if m in held], boundary)
        return up, down

    async def read_feed(self, tenant_id: str, after_cursor: str, limit: int) -> tuple[list[FeedEntry], str]:
        position = outbox.parse_cursor(after_cursor)
        size = outbox.page_size(limit, "limit")
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            return await feed_page(conn, position, size, after_cursor)


async def feed_page(
    conn: Connection, position: outbox.Position | None, size: int, after_cursor: str
) -> tuple[list[FeedEntry], str]:
    """The settled tasks feed entries after `position` (`after_cursor` parsed), and the cursor to
    continue from."""
    rows = await tasks_feed_store.read_feed(conn, position, size)
    entries = [
        FeedEntry(
            cursor=row["cursor"],
            member_id=row["member_id"],
            from_level=row["payload"]["from_level"],
            to_level=row["payload"]["to_level"],
            upgrade=row["payload"]["upgrade"],
            growth=row["payload"]["growth"],
            create_time=row["create_time"],
        )
        for row in rows
    ]
    return entries, entries[-1].cursor if entries else after_cursor
