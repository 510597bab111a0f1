"""The rewards catalog and redemption, free of SQL and gRPC.

A redemption runs in one tenant transaction in the ledger's lock order: the member's account
first, then the member's count of the reward (the per-member limit, a conditional upsert), then the
reward's row (taking a unit with a conditional update), then the member's lots, and last, for a
coupon reward with a template, the coupon it issues (coupons.issuing: the template's rows come after
every lock of ours). Points spent, the unit taken, the count, the coupon and the redemption row
commit together or not at all, so stock never oversells, no member passes the limit, a template
that cannot issue refuses the whole redemption and a failed redemption leaves the points untouched.

Rewards are managed: UpdateReward replaces the name, description, price and per-member limit and
adds stock (a new version when anything changes; the kind, odds and coupon template are fixed,
since redemptions already made were made of them), RetireReward takes one off the catalog for good.
A redemption keeps the price it paid.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
import secrets
from dataclasses import dataclass

import asyncpg

from runtime import page_tokens
from runtime.db import Connection, Database
from runtime.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Violations,
)
from services.tasks.coupons import issuing
from services.tasks.coupons.issuing import MemberTag, Source, TagReader
from services.tasks.coupons.templates import State as TemplateState
from services.tasks.points import ledger, ledger_store, rewards_store
from services.tasks.points.ledger import MAX_AMOUNT, Reason
from services.tasks.points.rewards_store import ACTIVE, RETIRED, Change, NewReward, Redemption, Reward

REWARD_ID = re.compile(r"^[a-z][a-z0-9_-]{0,62}\Z")
MAX_DISPLAY_NAME = 128
MAX_DESCRIPTION = 1024
MAX_PER_MEMBER_LIMIT = 1000
ODDS_SCALE = 10_000


class Kind(enum.IntEnum):
    """The numbers of memberops.tasks.v1.RewardKind."""

    COUPON = 1
    VIRTUAL_ITEM = 2
    PHYSICAL = 3
    LOTTERY = 4


class Outcome(enum.IntEnum):
    FULFILLED = 1
    LOST = 2


def validate_reward(reward: NewReward) -> None:
    v = Violations()
    if not REWARD_ID.match(reward.reward_id):
        v.add("reward.reward_id", "must be 1-63 characters: a lower-case letter, then a-z, 0-9, _ or -")
    if reward.kind not in Kind.__members__.values():
        v.add("reward.kind", "must be COUPON, VIRTUAL_ITEM, PHYSICAL or LOTTERY")
    if len(reward.display_name) > MAX_DISPLAY_NAME:
        v.add("reward.display_name", f"must be at most {MAX_DISPLAY_NAME} characters")
    ledger.check_amount(v, "reward.price", reward.price)
    if reward.initial_stock < 0 or reward.initial_stock > MAX_AMOUNT:
        v.add("reward.initial_stock", f"must be 0-{MAX_AMOUNT:,}")
    elif reward.initial_stock == 0 and reward.kind in (Kind.PHYSICAL, Kind.LOTTERY):
        v.add("reward.initial_stock", "is required for physical prizes and lotteries")
    if reward.kind == Kind.LOTTERY:
        if not 1 <= reward.win_odds_bp <= ODDS_SCALE:
            v.add("reward.win_odds_bp", f"must be 1-{ODDS_SCALE} for a lottery")
    elif reward.win_odds_bp:
        v.add("reward.win_odds_bp", "is only for lotteries")
    _check_content(v, reward.description, reward.per_member_limit)
    if reward.coupon_template:
        if reward.kind != Kind.COUPON:
            v.add("reward.coupon_template", "is only for coupon rewards")
        elif not REWARD_ID.match(reward.coupon_template):
            v.add("reward.coupon_template", "is not a coupon template id")
    v.raise_if_any()


def _check_content(v: Violations, description: str, per_member_limit: int) -> None:
    if len(description) > MAX_DESCRIPTION:
        v.add("reward.description", f"must be at most {MAX_DESCRIPTION} characters")
    if not 0 <= per_member_limit <= MAX_PER_MEMBER_LIMIT:
        v.add("reward.per_member_limit", f"must be 0 (no limit) to {MAX_PER_MEMBER_LIMIT}")


@dataclass(frozen=True)
class Update:
    """UpdateReward as asked: the reward's new content, what it says of the fixed fields (0 or
    empty: not said), the units to add and the version the caller saw (0: any)."""

    reward_id: str
    change: Change
    kind: int = 0
    win_odds_bp: int = 0
    coupon_template: str = ""
    initial_stock: int = 0
    expected_version: int = 0


def validate_update(update: Update) -> None:
    v = Violations()
    if not REWARD_ID.match(update.reward_id):
        v.add("reward.reward_id", "is not a reward id")
    change = update.change
    if len(change.display_name) > MAX_DISPLAY_NAME:
        v.add("reward.display_name", f"must be at most {MAX_DISPLAY_NAME} characters")
    ledger.check_amount(v, "reward.price", change.price)
    _check_content(v, change.description, change.per_member_limit)
    if not 0 <= change.add_stock <= MAX_AMOUNT:
        v.add("add_stock", f"must be 0-{MAX_AMOUNT:,}")
    if update.expected_version < 0:
        v.add("expected_version", "must be 0 (any) or a version number")
    v.raise_if_any()


def _check_fixed(update: Update, current: Reward) -> None:
    """The fields a reward keeps for life: said differently, INVALID_ARGUMENT naming each."""
    v = Violations()
    if update.kind and update.kind != current.kind:
        v.add("reward.kind", f"cannot change (rewards/{current.reward_id} is {Kind(current.kind).name})")
    if update.win_odds_bp and update.win_odds_bp != current.win_odds_bp:
        v.add("reward.win_odds_bp", "cannot change")
    if update.coupon_template and update.coupon_template != (current.coupon_template or ""):
        v.add("reward.coupon_template", "cannot change")
    if update.initial_stock and update.initial_stock != (current.initial_stock or 0):
        v.add("reward.initial_stock", "cannot change; add units with add_stock")
    if update.change.add_stock and current.stock is None:
        v.add("add_stock", f"rewards/{current.reward_id} has no stock limit")
    v.raise_if_any()


def _unchanged(change: Change, current: Reward) -> bool:
    return not change.add_stock and (
        change.display_name,
        change.description,
        change.price,
        change.per_member_limit,
    ) == (current.display_name, current.description, current.price, current.per_member_limit)


def wins(odds_bp: int) -> bool:
    """A server-side draw from the operating system's random source."""
    return secrets.randbelow(ODDS_SCALE) < odds_bp


class Rewards:
    def __init__(self, db: Database, members: ledger.Members, tags: TagReader) -> None:
        self._db = db
        self._members = members
        self._tags = tags

    async def create(self, tenant_id: str, reward: NewReward) -> Reward:
        validate_reward(reward)
        async with self._db.transaction(tenant_id) as conn:
            if reward.coupon_template:
                await _check_template(conn, reward.coupon_template)
            created = await rewards_store.insert_reward(conn, tenant_id, reward)
            if created is not None:
                return created
            existing = await rewards_store.reward(conn, tenant_id, reward.reward_id)
        assert existing is not None
        # As created (version 1): a reward changed since is not what this request would create.
        same = (
            existing.version,
            existing.kind,
            existing.display_name,
            existing.price,
            existing.initial_stock or 0,
            existing.win_odds_bp,
            existing.description,
            existing.coupon_template or "",
            existing.per_member_limit,
        ) == (
            1,
            reward.kind,
            reward.display_name,
            reward.price,
            reward.initial_stock,
            reward.win_odds_bp,
            reward.description,
            reward.coupon_template,
            reward.per_member_limit,
        )
        if not same:
            raise AlreadyExists(f"reward {reward.reward_id!r} exists with other content")
        return existing

    async def update(self, tenant_id: str, update: Update) -> Reward:
        """The reward with the new content, one version on; content equal to the current one (and
        no stock to add) changes nothing and is answered before `expected_version` is compared, so
        a retried change is harmless."""
        validate_update(update)
        async with self._db.transaction(tenant_id) as conn:
            current = await rewards_store.reward(conn, tenant_id, update.reward_id, lock=True)
            if current is None:
                raise NotFound(f"reward {update.reward_id!r} does not exist")
            _check_fixed(update, current)
            if _unchanged(update.change, current):
                return current
            if update.expected_version and update.expected_version != current.version:
                raise Aborted(
                    f"rewards/{update.reward_id} is at version {current.version}, "
                    f"not {update.expected_version}"
                )
            if current.state == RETIRED:
                raise FailedPrecondition(f"reward {update.reward_id!r} is retired")
            return await rewards_store.change_reward(conn, tenant_id, update.reward_id, update.change)

    async def retire(self, tenant_id: str, reward_id: str) -> Reward:
        if not REWARD_ID.match(reward_id):
            raise InvalidArgument.field("reward_id", "is not a reward id")
        async with self._db.transaction(tenant_id) as conn:
            retired = await rewards_store.retire_reward(conn, tenant_id, reward_id)
        if retired is None:
            raise NotFound(f"reward {reward_id!r} does not exist")
        return retired

    async def list_page(
        self, tenant_id: str, size: int, token: str, show_retired: bool = False
    ) -> tuple[list[Reward], str]:
        limit = ledger.page_size(size)
        after = page_tokens.decode_one(token, "rewards", str)
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            page = await rewards_store.rewards(
                conn, tenant_id, after or "", limit + 1, show_retired=show_retired
            )
        if len(page) > limit:
            return page[:limit], page_tokens.encode("rewards", page[limit - 1].reward_id)
        return page, ""

    async def redeem(
        self, tenant_id: str, member_id: str, reward_id: str, request_id: str, now: dt.datetime
    ) -> Redemption:
        v = Violations()
        ledger.check_member_id(v, "member_id", member_id)
        if not REWARD_ID.match(reward_id):
            v.add("reward_id", "is not a reward id")
        ledger.check_id(v, "request_id", request_id)
        v.raise_if_any()
        await self._members.require_member(tenant_id, member_id)
        tag = await self._coupon_tag(tenant_id, reward_id, member_id)
        try:
            return await self._redeem(tenant_id, member_id, reward_id, request_id, tag, now)
        except asyncpg.UniqueViolationError:
            # Another member's redemption took the request id first: the retry finds it.
            return await self._redeem(tenant_id, member_id, reward_id, request_id, tag, now)

    async def _coupon_tag(self, tenant_id: str, reward_id: str, member_id: str) -> MemberTag | None:
        """For a reward that issues a coupon whose threshold follows a tag: the member's tag, read
        before the redemption's transaction opens (no transaction waits on tagging)."""
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            reward = await rewards_store.reward(conn, tenant_id, reward_id)
            if reward is None or not reward.coupon_template:
                return None
            template = await issuing.current_template(conn, reward.coupon_template)
        return await issuing.tag_for(self._tags, tenant_id, template.definition, member_id)

    async def _redeem(
        self,
        tenant_id: str,
        member_id: str,
        reward_id: str,
        request_id: str,
        tag: MemberTag | None,
        now: dt.datetime,
    ) -> Redemption:
        async with self._db.transaction(tenant_id) as conn:
            await ledger_store.lock_account(conn, tenant_id, member_id)
            first = await rewards_store.redemption_by_request(conn, tenant_id, request_id)
            if first is not None:
                if (first.member_id, first.reward_id) != (member_id, reward_id):
                    raise AlreadyExists(f"request_id {request_id!r} was used for a different redemption")
                return first
            reward = await rewards_store.reward(conn, tenant_id, reward_id)
            if reward is None:
                raise NotFound(f"reward {reward_id!r} does not exist")
            if reward.state != ACTIVE:
                raise FailedPrecondition(f"reward {reward_id!r} is retired")
            if not await rewards_store.count_redemption(conn, tenant_id, reward, member_id):
                raise ResourceExhausted(
                    f"member {member_id!r} has redeemed reward {reward_id!r} "
                    f"{reward.per_member_limit} times, its per-member limit"
                )
            won = reward.kind != Kind.LOTTERY or wins(reward.win_odds_bp)
            if reward.stock is not None and not await rewards_store.take_unit(
                conn, tenant_id, reward_id, take=won
            ):
                raise ResourceExhausted(f"reward {reward_id!r} is out of stock")
            lots = await ledger_store.spendable_lots(conn, tenant_id, member_id, now)
            try:
                taken = ledger.draw(lots, reward.price)
            except FailedPrecondition:
                raise FailedPrecondition(
                    f"reward {reward_id!r} costs {reward.price} points; too few available"
                ) from None
            entry = await ledger_store.insert_draw(
                conn,
                tenant_id,
                ledger_store.NewEntry(
                    member_id=member_id,
                    delta=-reward.price,
                    reason=Reason.REDEMPTION,
                    reference=f"rewards/{reward_id}",
                ),
                taken,
            )
            code = None
            if reward.coupon_template and won:
                # In the spend's transaction: a template that cannot issue (retired, out of stock,
                # the member at its limit) refuses the whole redemption, and nothing is spent.
                coupon = await issuing.issue(
                    conn,
                    tenant_id,
                    reward.coupon_template,
                    member_id,
                    source=Source(campaign=f"rewards/{reward_id}"),
                    key=f"rewards/{request_id}",
                    tag=tag,
                    now=now,
                )
                code = coupon.code
            outcome = Outcome.FULFILLED if won else Outcome.LOST
            return await rewards_store.insert_redemption(
                conn, tenant_id, request_id, member_id, reward_id, reward.price, outcome, entry.entry_id, code
            )


async def _check_template(conn: Connection, template_id: str) -> None:
    """A coupon reward's template exists and issues (checked when the reward is created)."""
    try:
        template = await issuing.current_template(conn, template_id)
    except NotFound:
        raise InvalidArgument.field(
            "reward.coupon_template", f"couponTemplates/{template_id} does not exist"
        ) from None
    if template.state is TemplateState.RETIRED:
        raise FailedPrecondition(f"couponTemplates/{template_id} is retired")
