"""Invite tasks: a member invites a new member; both earn when the invitee registers or first buys.

Rules: nobody invites themselves; a member is invited once (the invitee is the key, across all
invite tasks of a tenant); only a new member can be invited: one tasks has not seen register
with tagging, or saw register within the last NEW_MEMBER_WINDOW; an inviter records at most the
task's `limits.per_day` invites a day and `limits.total` in all.

What the invitee did comes from tagging's feed (member_facts, kept by the follower), so the order
of events does not matter: an invite recorded after its trigger completes at once, one recorded
before completes when the follower sees the trigger. The invitee's member_facts row is the lock
both sides take first, so neither can miss the other.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from runtime.db import Connection, savepoint
from runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    ResourceExhausted,
    Violations,
)
from services.tasks.points import ledger, ledger_store
from services.tasks.tasks import completion_store, completions, invite_store
from services.tasks.tasks.completion_store import CompletionRow
from services.tasks.tasks.completions import Grant
from services.tasks.tasks.definitions import InviteSpec, InviteTrigger, Kind, Task
from services.tasks.tasks.invite_store import InviteRow, MemberFacts
from services.tasks.tasks.member_calls import MemberCalls

NEW_MEMBER_WINDOW = dt.timedelta(hours=24)
DEFAULT_CLAWBACK_DAYS = 30


class InviteState:
    """The numbers of memberops.tasks.v1.InviteState."""

    PENDING = 1
    COMPLETED = 2
    UNPAID = 3
    REVERSED = 4


@dataclass(frozen=True)
class Invite:
    invite: InviteRow
    inviter_completion: CompletionRow | None
    invitee_completion: CompletionRow | None


def triggered_at(spec: InviteSpec, facts: MemberFacts | None) -> dt.datetime | None:
    """When the invitee did what the task waits for, if they did."""
    if facts is None:
        return None
    return facts.register_time if spec.trigger == InviteTrigger.REGISTER else facts.first_order_time


async def complete(
    conn: Connection, tenant_id: str, task: Task, invite: InviteRow, at: dt.datetime, now: dt.datetime
) -> InviteRow:
    """Pays both sides in one savepoint (accounts locked by the caller), their points taken from
    the task's budget once, for the sum: RESOURCE_EXHAUSTED, and nothing paid, when the budget
    cannot cover both."""
    spec = task.definition.spec
    assert isinstance(spec, InviteSpec)
    day = task.definition.day(at)
    inviter, invitee = invite.inviter_member_id, invite.invitee_member_id
    grants = [(Grant(inviter, task.definition.reward_points, f"invite {invitee}", day), None)]
    if spec.invitee_points:
        grants.append((Grant(invitee, spec.invitee_points, f"invited by {inviter}", day), None))
    async with savepoint(conn):
        paid = await completions.grant_all(conn, tenant_id, task, grants, now)
    return await invite_store.finish_invite(
        conn,
        invitee,
        InviteState.COMPLETED,
        paid[0].completion_id,
        paid[1].completion_id if len(paid) > 1 else None,
    )


def clawback_window(spec: InviteSpec) -> dt.timedelta:
    return dt.timedelta(days=spec.clawback_window_days or DEFAULT_CLAWBACK_DAYS)


def clawed_back(spec: InviteSpec, paid: dt.datetime, refunded: dt.datetime, in_full: bool) -> bool:
    """Whether a refund takes a FIRST_ORDER invite back: its qualifying order refunded in full
    within the clawback window of the order's paid time."""
    if spec.trigger != InviteTrigger.FIRST_ORDER or not in_full:
        return False
    return refunded - paid <= clawback_window(spec)


async def reverse(conn: Connection, tenant_id: str, invite: InviteRow, why: str) -> None:
    """Takes back both sides' invite points (what is left of them; the rest is the reversals'
    shortfall, never a debt) and marks the invite REVERSED. The accounts of both are locked by
    the caller, and so is the invite row (so it happens once)."""
    for completion_id in (invite.inviter_completion_id, invite.invitee_completion_id):
        if completion_id is None:
            continue
        completion = await completion_store.completion(conn, completion_id)
        if completion is not None and completion.state != completions.State.REVERSED:
            await completions.reverse(conn, tenant_id, completion, why)
    await invite_store.set_state(conn, invite.invitee_member_id, InviteState.REVERSED)


async def unpaid(conn: Connection, invite: InviteRow) -> InviteRow:
    return await invite_store.finish_invite(conn, invite.invitee_member_id, InviteState.UNPAID, None, None)


class Invites(MemberCalls):
    async def record(
        self, tenant_id: str, task_id: str, inviter: str, invitee: str, request_id: str, now: dt.datetime
    ) -> Invite:
        v = Violations()
        ledger.check_member_id(v, "inviter_member_id", inviter)
        ledger.check_member_id(v, "invitee_member_id", invitee)
        if inviter and inviter == invitee:
            v.add("invitee_member_id", "must not be the inviter: members cannot invite themselves")
        ledger.check_id(v, "request_id", request_id)
        v.raise_if_any()
        digest = ledger.content_hash("invite", task_id, inviter, invitee)

        return await self._act(
            tenant_id,
            task_id,
            Kind.INVITE,
            inviter,
            now,
            lambda task: self._write(tenant_id, task, inviter, invitee, request_id, digest, now),
        )

    async def _write(
        self,
        tenant_id: str,
        task: Task,
        inviter: str,
        invitee: str,
        request_id: str,
        digest: str,
        now: dt.datetime,
    ) -> Invite:
        spec = task.definition.spec
        assert isinstance(spec, InviteSpec)
        day = task.definition.day(now)
        async with self._db.transaction(tenant_id) as conn:
            facts = (await invite_store.lock_member_facts(conn, tenant_id, [invitee]))[invitee]
            await ledger_store.lock_accounts_creating(conn, tenant_id, [inviter, invitee])
            first = await invite_store.invite_by_request(conn, request_id)
            if first is not None:
                if first.content_hash != digest:
                    raise AlreadyExists(f"request_id {request_id!r} was used for a different request")
                return await self._loaded(conn, first)
            if await invite_store.invite_of(conn, invitee) is not None:
                raise AlreadyExists(f"members/{invitee} was already invited; a member is invited once")
            if facts.register_time is not None and facts.register_time < now - NEW_MEMBER_WINDOW:
                raise FailedPrecondition(
                    f"members/{invitee} joined on {facts.register_time.date()}; "
                    "only new members can be invited"
                )
            total, today = await invite_store.invites_by(conn, task.task_id, inviter, day)
            limits = task.definition.limits
            if limits.per_day and today >= limits.per_day:
                raise ResourceExhausted(
                    f"members/{inviter} reached today's limit of {limits.per_day} invites"
                )
            if limits.total and total >= limits.total:
                raise ResourceExhausted(f"members/{inviter} reached the limit of {limits.total} invites")
            invite = await invite_store.insert_invite(
                conn, tenant_id, task.task_id, inviter, invitee, day, request_id, digest
            )
            at = triggered_at(spec, facts)
            if at is not None:
                invite = await complete(conn, tenant_id, task, invite, at, now)
            return await self._loaded(conn, invite)

    async def _loaded(self, conn: Connection, invite: InviteRow) -> Invite:
        async def get(completion_id: int | None) -> CompletionRow | None:
            return None if completion_id is None else await completion_store.completion(conn, completion_id)

        return Invite(
            invite, await get(invite.inviter_completion_id), await get(invite.invitee_completion_id)
        )
