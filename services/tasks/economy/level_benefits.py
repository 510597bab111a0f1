"""GrantLevelBenefits: the month's coupon of each member's level, and the birthday coupon in the
member's birthday month, each once per member, benefit and month (birthday: year).

Who is granted: members with a points account in tasks (members tasks knows: they earned, spent
or were paid something; erased members' pseudonyms are left out), each at the level they hold now
(the base level without a level row), so base-level members get the base tier's benefits too.
Birthdays are tagging's: read for the batch's members with BatchGetMembers when a tier gives a
birthday coupon, never copied into tasks (nothing to erase, never stale); so are the tags a
template's threshold follows (read for the batch before any grant's transaction opens). Members
granted already in the period are passed over without a transaction.

Each grant is one short transaction: the grant's row (the idempotency key; a concurrent run waits
on it, then finds it) and the coupon through the coupons' issuing API, whose key is derived from
the grant. A refusal (no stock left, retired template, the member at the template's per-member
limit, its validity ended) rolls the grant back, so a later run tries again; only no-stock is
counted (`out_of_stock`). Months are calendar months of the level policy's zone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from runtime.db import Database
from runtime.errors import FailedPrecondition, NotFound, Violations
from runtime.logs import get_logger
from services.tasks import time_span
from services.tasks.coupons import issuing
from services.tasks.economy import benefit_store
from services.tasks.levels.levels import Levels, Policy, coupon_template_id

log = get_logger("memberops.tasks.level_benefits")

BATCH = 500
MONTHLY, BIRTHDAY = "monthly", "birthday"
CAMPAIGN = "levels/benefits"


class Directory(issuing.TagReader, Protocol):
    """Tagging, for members' birthdays and the tags coupon thresholds follow."""

    async def birthday_months(self, tenant_id: str, member_ids: Sequence[str]) -> Mapping[str, int]:
        """Each member's birthday month (1-12); members without a birthday, or unknown, left out."""
        ...


@dataclass(frozen=True)
class Granted:
    monthly_coupons: int = 0
    birthday_coupons: int = 0
    out_of_stock: int = 0


@dataclass(frozen=True)
class Grant:
    member_id: str
    benefit: str
    period: str
    template_id: str


def periods(local: dt.datetime) -> dict[str, str]:
    """Each benefit's period holding `local`: its calendar month, and its year for birthdays."""
    return {MONTHLY: f"{local.year:04d}-{local.month:02d}", BIRTHDAY: f"{local.year:04d}"}


def grants_due(
    policy: Policy, members: Sequence[tuple[str, str]], birthdays: Mapping[str, int], local: dt.datetime
) -> list[Grant]:
    """The grants `members` ((member, level code)) are due in the month of `local`, in member
    order, the monthly coupon before the birthday one."""
    tiers = {t.code: t.benefits for t in policy.tiers}
    month, year = periods(local)[MONTHLY], periods(local)[BIRTHDAY]
    due: list[Grant] = []
    for member_id, code in members:
        benefits = tiers.get(code)
        if benefits is None:
            continue
        monthly = coupon_template_id(benefits.monthly_coupon_template)
        if monthly is not None:
            due.append(Grant(member_id, MONTHLY, month, monthly))
        birthday = coupon_template_id(benefits.birthday_coupon_template)
        if birthday is not None and birthdays.get(member_id) == local.month:
            due.append(Grant(member_id, BIRTHDAY, year, birthday))
    return due


class LevelBenefits:
    def __init__(self, db: Database, levels: Levels, directory: Directory) -> None:
        self._db = db
        self._levels = levels
        self._directory = directory

    async def grant(self, tenant_id: str, asked: dt.datetime | None, now: dt.datetime) -> Granted:
        v = Violations()
        as_of = time_span.as_of(asked, now, v)
        v.raise_if_any()
        policy = await self._levels.policy(tenant_id)
        benefits = [t.benefits for t in policy.tiers]
        if not any(b.monthly_coupon_template or b.birthday_coupon_template for b in benefits):
            return Granted()
        wants_birthdays = any(b.birthday_coupon_template for b in benefits)
        local = as_of.astimezone(policy.zone)
        counts = {MONTHLY: 0, BIRTHDAY: 0}
        out_of_stock = 0
        after = ""
        while True:
            async with self._db.transaction(tenant_id, readonly=True) as conn:
                members = await benefit_store.members_after(conn, policy.tiers[0].code, after, BATCH)
                done = await benefit_store.granted(conn, [m for m, _ in members], periods(local))
            if not members:
                break
            after = members[-1][0]
            open_birthdays = [m for m, _ in members if (m, BIRTHDAY) not in done]
            birthdays = (
                await self._directory.birthday_months(tenant_id, open_birthdays)
                if wants_birthdays and open_birthdays
                else {}
            )
            due = [
                g
                for g in grants_due(policy, members, birthdays, local)
                if (g.member_id, g.benefit) not in done
            ]
            tags = await self._tags(tenant_id, due)
            for grant in due:
                outcome = await self._grant(
                    tenant_id, grant, tags.get((grant.template_id, grant.member_id)), now
                )
                if outcome is None:
                    out_of_stock += 1
                elif outcome:
                    counts[grant.benefit] += 1
        return Granted(counts[MONTHLY], counts[BIRTHDAY], out_of_stock)

    async def _tags(self, tenant_id: str, due: Sequence[Grant]) -> dict[tuple[str, str], issuing.MemberTag]:
        """The member tags the due grants' templates set their thresholds by, read before any
        grant's transaction opens (template id, member) -> tag; templates without tag thresholds
        (or gone: their issue refuses) read nothing."""
        found: dict[tuple[str, str], issuing.MemberTag] = {}
        for template_id in sorted({g.template_id for g in due}):
            try:
                async with self._db.transaction(tenant_id, readonly=True) as conn:
                    dimension = (await issuing.current_template(conn, template_id)).definition.tag_dimension
            except NotFound:
                continue
            if not dimension:
                continue
            members = sorted({g.member_id for g in due if g.template_id == template_id})
            values = await self._directory.member_tags(tenant_id, dimension, members)
            found.update({(template_id, m): issuing.MemberTag(dimension, values.get(m)) for m in members})
        return found

    async def _grant(
        self, tenant_id: str, grant: Grant, tag: issuing.MemberTag | None, now: dt.datetime
    ) -> bool | None:
        """Whether this run issued the grant's coupon; None when the template had no stock left."""
        try:
            async with self._db.transaction(tenant_id) as conn:
                if not await benefit_store.claim_grant(
                    conn, tenant_id, grant.member_id, grant.benefit, grant.period, grant.template_id
                ):
                    return False
                coupon = await issuing.issue(
                    conn,
                    tenant_id,
                    grant.template_id,
                    grant.member_id,
                    source=issuing.Source(CAMPAIGN, grant.benefit),
                    key=f"levelBenefits/{grant.benefit}/{grant.period}/{grant.member_id}",
                    tag=tag,
                    now=now,
                )
                await benefit_store.issued(conn, grant.member_id, grant.benefit, grant.period, coupon.code)
                return True
        except issuing.OutOfStock:
            return None
        except (FailedPrecondition, NotFound) as refused:
            log.info("level benefit not granted", tenant=tenant_id, member=grant.member_id, why=str(refused))
            return False
