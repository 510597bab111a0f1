"""The rewards catalog and redemption, free of SQL and gRPC.

A redemption runs in one tenant transaction in the ledger's lock order: the member's account
first, then the reward's row (taking a unit with a conditional update), then the member's lots.
Points spent, the unit taken and the redemption row commit together or not at all, so stock never
oversells and a failed redemption leaves the points untouched.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
import secrets

import asyncpg

from runtime import page_tokens
from runtime.db import Database
from runtime.errors import AlreadyExists, FailedPrecondition, NotFound, ResourceExhausted, Violations
from services.tasks.points import ledger, ledger_store, rewards_store
from services.tasks.points.ledger import MAX_AMOUNT, Reason
from services.tasks.points.rewards_store import NewReward, Redemption, Reward

REWARD_ID = re.compile(r"^[a-z][a-z0-9_-]{0,62}\Z")
MAX_DISPLAY_NAME = 128
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
    v.raise_if_any()


def wins(odds_bp: int) -> bool:
    """A server-side draw from the operating system's random source."""
    return secrets.randbelow(ODDS_SCALE) < odds_bp


class Rewards:
    def __init__(self, db: Database, members: ledger.Members) -> None:
        self._db = db
        self._members = members

    async def create(self, tenant_id: str, reward: NewReward) -> Reward:
        validate_reward(reward)
        async with self._db.transaction(tenant_id) as conn:
            created = await rewards_store.insert_reward(conn, tenant_id, reward)
            if created is not None:
                return created
            existing = await rewards_store.reward(conn, tenant_id, reward.reward_id)
        assert existing is not None
        same = (existing.kind, existing.display_name, existing.price, existing.initial_stock or 0) == (
            reward.kind,
            reward.display_name,
            reward.price,
            reward.initial_stock,
        )
        if not same or existing.win_odds_bp != reward.win_odds_bp:
            raise AlreadyExists(f"reward {reward.reward_id!r} exists with other content")
        return existing

    async def list_page(self, tenant_id: str, size: int, token: str) -> tuple[list[Reward], str]:
        limit = ledger.page_size(size)
        after = page_tokens.decode_one(token, "rewards", str)
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            page = await rewards_store.rewards(conn, tenant_id, after or "", limit + 1)
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
        try:
            return await self._redeem(tenant_id, member_id, reward_id, request_id, now)
        except asyncpg.UniqueViolationError:
            # Another member's redemption took the request id first: the retry finds it.
            return await self._redeem(tenant_id, member_id, reward_id, request_id, now)

    async def _redeem(
        self, tenant_id: str, member_id: str, reward_id: str, request_id: str, now: dt.datetime
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
            outcome = Outcome.FULFILLED if won else Outcome.LOST
            return await rewards_store.insert_redemption(
                conn, tenant_id, request_id, member_id, reward_id, reward.price, outcome, entry.entry_id
            )
