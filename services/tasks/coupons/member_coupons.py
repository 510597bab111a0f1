"""Coupons members hold: issued by an operator (IssueCoupon), taken by the member (ClaimCoupon),
read by code and by member, and counted per campaign arm (free of SQL and gRPC).

Each issue is one autocommitted statement on the pool (one round trip, where BEGIN, two statements
and COMMIT were four), and issues of one template that arrive while two are at the database go as
one statement for the group (`issuing.write_group`, decision 160). A refusal, or a request id
another call took first, is answered by the coupon that request id already issued when there is
one (a retry after a success is a success); otherwise the refusal stands.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Sequence
from typing import Protocol

import asyncpg

from runtime import page_tokens
from runtime.batching import KeyedBatcher
from runtime.db import Database
from runtime.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Violations,
)
from services.tasks.coupons import codes, coupon_store
from services.tasks.coupons.catalog import CouponTemplates
from services.tasks.coupons.coupon_store import ArmRow, CouponRow, NewCoupon
from services.tasks.coupons.issuing import (
    STALE_ATTEMPTS,
    MemberLimitReached,
    MemberTag,
    OutOfStock,
    Source,
    Stale,
    TagReader,
    check_source,
    first_issue,
    new_coupon,
    tag_for,
    too_busy,
    write_group,
)
from services.tasks.coupons.templates import Template
from services.tasks.points import ledger

CLAIMS_CAMPAIGN = "claims"
# Issue statements of one template at the database at once: they all take the template's row and
# its stock's shards, so more only queue on locks inside PostgreSQL (decision 158). Issues arriving
# meanwhile wait and go as the next group (runtime/batching.py, decisions 160 and 161).
GROUPS_IN_FLIGHT = 1
MAX_GROUP = 32
# What an order may name as a code (tagging's rule for Order.coupon_codes).
ANY_CODE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
MAX_CAMPAIGN = 128


class CouponState(enum.IntEnum):
    """The numbers of memberops.tasks.v1.CouponState."""

    AVAILABLE = 1
    USED = 2
    EXPIRED = 3


def state_at(coupon: CouponRow, now: dt.datetime) -> CouponState:
    """USED as stored; an available coupon past its validity reads EXPIRED."""
    if coupon.state == CouponState.USED:
        return CouponState.USED
    return CouponState.EXPIRED if coupon.valid_until <= now else CouponState.AVAILABLE


class ClaimLimitReached(ResourceExhausted):
    """A claim past the member's per-member limit (RESOURCE_EXHAUSTED for claims)."""


class Directory(Protocol):
    async def member_exists(self, tenant_id: str, member_id: str) -> bool: ...

    async def in_audience(self, tenant_id: str, audience_id: str, member_id: str) -> bool | None: ...


class Coupons:
    def __init__(
        self, db: Database, templates: CouponTemplates, directory: Directory, tags: TagReader
    ) -> None:
        self._db = db
        self._templates = templates
        self._directory = directory
        self._tags = tags
        self._groups: KeyedBatcher[tuple[str, str], tuple[Template, NewCoupon], CouponRow] = KeyedBatcher(
            self._write, in_flight=GROUPS_IN_FLIGHT, max_size=MAX_GROUP
        )

    async def issue(
        self,
        tenant_id: str,
        template_id: str,
        member_id: str,
        source: Source,
        request_id: str,
        now: dt.datetime,
    ) -> CouponRow:
        v = Violations()
        ledger.check_member_id(v, "member_id", member_id)
        check_source(v, "source", source)
        ledger.check_id(v, "request_id", request_id)
        v.raise_if_any()
        template = await self._templates.current(tenant_id, template_id)
        if not await self._directory.member_exists(tenant_id, member_id):
            raise NotFound(f"members/{member_id} not found")
        return await self._issue(tenant_id, template, member_id, source, request_id, now, claim=False)

    async def claim(
        self, tenant_id: str, template_id: str, member_id: str, request_id: str, now: dt.datetime
    ) -> CouponRow:
        v = Violations()
        ledger.check_member_id(v, "member_id", member_id)
        ledger.check_id(v, "request_id", request_id)
        v.raise_if_any()
        template = await self._templates.current(tenant_id, template_id)
        source = Source(CLAIMS_CAMPAIGN)
        try:
            await self._check_claim(tenant_id, template, member_id)
        except FailedPrecondition as refusal:
            return await self._first_or_raise(tenant_id, template_id, member_id, source, request_id, refusal)
        return await self._issue(tenant_id, template, member_id, source, request_id, now, claim=True)

    async def _check_claim(self, tenant_id: str, template: Template, member_id: str) -> None:
        """NOT_FOUND for an unknown member; FAILED_PRECONDITION for a template members cannot
        claim or a member outside its claim audience."""
        d = template.definition
        if not d.claimable:
            raise FailedPrecondition(f"couponTemplates/{d.template_id} cannot be claimed")
        if not d.claim_audience_id:
            if not await self._directory.member_exists(tenant_id, member_id):
                raise NotFound(f"members/{member_id} not found")
            return
        member = await self._directory.in_audience(tenant_id, d.claim_audience_id, member_id)
        if member is None:
            raise NotFound(f"members/{member_id} not found")
        if not member:
            raise FailedPrecondition(
                f"members/{member_id} is not in audiences/{d.claim_audience_id}, "
                f"who may claim couponTemplates/{d.template_id}"
            )

    async def _issue(
        self,
        tenant_id: str,
        template: Template,
        member_id: str,
        source: Source,
        request_id: str,
        now: dt.datetime,
        *,
        claim: bool,
    ) -> CouponRow:
        template_id = template.template_id
        tag: MemberTag | None = None
        for _ in range(STALE_ATTEMPTS):
            if tag is None or tag.dimension != template.definition.tag_dimension:
                tag = await tag_for(self._tags, tenant_id, template.definition, member_id)
            try:
                coupon = new_coupon(template, member_id, source, request_id, tag, now)
                return await self._groups.submit((tenant_id, template_id), (template, coupon))
            except Stale:
                template = await self._templates.current(tenant_id, template_id, fresh=True)
                if claim:
                    await self._check_claim(tenant_id, template, member_id)
            except MemberLimitReached as refusal:
                # The statement found no coupon of the request id (write_one), so no read here.
                if claim:
                    raise ClaimLimitReached(refusal.message) from None
                raise
            except OutOfStock:
                raise
            except (DomainError, asyncpg.UniqueViolationError) as refusal:
                return await self._first_or_raise(
                    tenant_id, template_id, member_id, source, request_id, refusal
                )
        raise too_busy(template_id)

    async def _write(
        self, key: tuple[str, str], issues: Sequence[tuple[Template, NewCoupon]]
    ) -> list[CouponRow | BaseException]:
        """A group of one template's issues (`write_group`); a template read again while the group
        formed leaves its issues of each version to their own statements."""
        tenant_id = key[0]
        versions: dict[int, list[int]] = {}
        for i, (template, _) in enumerate(issues):
            versions.setdefault(template.version, []).append(i)
        outcomes: list[CouponRow | BaseException] = [RuntimeError()] * len(issues)
        for places in versions.values():
            template = issues[places[0]][0]
            written = await write_group(self._db.pool, tenant_id, template, [issues[i][1] for i in places])
            for i, outcome in zip(places, written, strict=True):
                outcomes[i] = outcome
        return outcomes

    async def _first(
        self, tenant_id: str, template_id: str, member_id: str, source: Source, request_id: str
    ) -> CouponRow | None:
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            first = await coupon_store.by_request(conn, request_id)
        return None if first is None else first_issue(first, template_id, member_id, source)

    async def _first_or_raise(
        self,
        tenant_id: str,
        template_id: str,
        member_id: str,
        source: Source,
        request_id: str,
        refusal: Exception,
    ) -> CouponRow:
        """The coupon the request id issued before, or the refusal raised."""
        first = await self._first(tenant_id, template_id, member_id, source, request_id)
        if first is None:
            raise refusal
        return first

    async def get(self, tenant_id: str, code: str) -> CouponRow:
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            row = await coupon_store.by_code(conn, code)
        if row is None:
            raise NotFound(f"coupons/{code} not found")
        return row

    async def member_page(
        self,
        tenant_id: str,
        member_id: str,
        states: Sequence[int],
        size: int,
        token: str,
        now: dt.datetime,
    ) -> tuple[list[CouponRow], str]:
        v = Violations()
        ledger.check_member_id(v, "member_id", member_id)
        for i, state in enumerate(states):
            if state not in CouponState.__members__.values():
                v.add(f"states[{i}]", "must be AVAILABLE, USED or EXPIRED")
        v.raise_if_any()
        limit = ledger.page_size(size)
        wanted = sorted(set(states))
        scope = f"coupons/{member_id}/{','.join(map(str, wanted))}"
        before = page_tokens.decode_one(token, scope, int)
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            rows = await coupon_store.member_coupons(conn, member_id, wanted, now, before, limit + 1)
        page = rows[:limit]
        return page, page_tokens.encode(scope, page[-1].coupon_id) if len(rows) > limit else ""

    async def stats(self, tenant_id: str, campaign: str) -> list[ArmRow]:
        if not campaign or len(campaign) > MAX_CAMPAIGN or not campaign.isprintable():
            raise InvalidArgument.field("campaign", f"must be 1-{MAX_CAMPAIGN} printable characters")
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            return await coupon_store.arm_stats(conn, campaign)


def code_from_name(name: str) -> str:
    """The code `coupons/{code}` names: INVALID_ARGUMENT for a name no code can have, NOT_FOUND
    for a well-formed code this service never issues."""
    code = name.removeprefix("coupons/")
    if not name.startswith("coupons/") or not ANY_CODE.match(code):
        raise InvalidArgument.field("name", "must be a resource name of the form coupons/{code}")
    found = codes.code_from_name(name)
    if found is None:
        raise NotFound(f"{name} not found")
    return found
