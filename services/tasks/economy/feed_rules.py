"""What the economy rules do with a batch of tagging's feed, inside the follower's transaction:
orders earn by the order earning rule, and a full refund of an invitee's qualifying first order
within its window takes the invite back.

`Economy.read` runs before the follower locks accounts (it locks the invites it may reverse:
invites come before accounts in the lock order) and names the members whose accounts must be
locked; `order` and `refund` run per entry afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from runtime.db import Connection
from runtime.tagging_feed import FeedKind, RefundRecorded
from services.tasks.allowance import allowance
from services.tasks.economy import order_earning
from services.tasks.economy.order_earning import Rule
from services.tasks.feed.source import FeedEntry
from services.tasks.tasks import definition_store, invite_store, invites
from services.tasks.tasks.definitions import InviteSpec, task_from_row


@dataclass
class Economy:
    rule: Rule | None = None
    # Invites whose qualifying order the batch refunds, by invitee (dropped once reversed).
    qualified: dict[str, invite_store.Qualified] = field(default_factory=dict)

    @classmethod
    async def read(cls, conn: Connection, facts: Sequence[FeedEntry]) -> Economy:
        refunds = [(e.member_id, e.payload.order_id) for e in facts if isinstance(e.payload, RefundRecorded)]
        qualified = await invite_store.qualified_by(conn, refunds)
        return cls(await order_earning.enabled_rule(conn), {q.invite.invitee_member_id: q for q in qualified})

    def members(self, facts: Sequence[FeedEntry]) -> list[str]:
        """Whose accounts the batch may pay or take from."""
        invited = [
            m
            for q in self.qualified.values()
            for m in (q.invite.inviter_member_id, q.invite.invitee_member_id)
        ]
        return [*order_earning.earning_members(self.rule, facts), *invited]

    async def order(self, conn: Connection, tenant_id: str, entry: FeedEntry) -> bool:
        """Pays a live order by the rule; whether it holds the rule's points."""
        return await order_earning.earn(conn, tenant_id, self.rule, entry)

    async def refund(
        self, conn: Connection, tenant_id: str, entry: FeedEntry, budgets: allowance.Holding
    ) -> bool:
        """Takes back the invite a refund in full of its qualifying order undoes; whether it did.
        Its points go back to the invite task's budget, held whole in `budgets` first (the round
        may touch it again)."""
        refund = entry.payload
        found = self.qualified.get(entry.member_id)
        if entry.kind != FeedKind.REFUND_RECORDED or not isinstance(refund, RefundRecorded) or found is None:
            return False
        standing = refund.order_standing
        if refund.order_id != found.order_id or standing is None:
            return False
        row = await definition_store.task(conn, found.invite.task_id)
        assert row is not None
        spec = task_from_row(row).definition.spec
        refunded = refund.refund_time or entry.create_time
        if not isinstance(spec, InviteSpec) or not invites.clawed_back(
            spec, found.paid_time, refunded, standing.refunded_in_full
        ):
            return False
        # As it stands now: an order earlier in the batch may have completed it.
        invite = await invite_store.invite_of(conn, entry.member_id)
        if invite is None or invite.state != invites.InviteState.COMPLETED:
            return False
        del self.qualified[entry.member_id]
        why = f"refund {entry.subject_id} of order {refund.order_id}"
        await budgets.hold(conn, definition_store.budget_owner(invite.task_id))
        await invites.reverse(conn, tenant_id, invite, why)
        return True
