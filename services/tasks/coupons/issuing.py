"""Issuing one coupon to one member, inside a transaction the caller holds (free of gRPC).

This is the one way a coupon comes to exist: IssueCoupon and ClaimCoupon, a reward's redemption,
a level benefit and a journey step all end here. The per-member limit and the stock are each
taken by one conditional statement (coupon_store), so they hold under any concurrency; a refusal
is a domain error and writes nothing. A request id (`key`) issues once: a retry returns the first
coupon, the same key with other content is ALREADY_EXISTS.

The threshold that follows a member's tag is read from tagging before the transaction opens
(`MemberTag`, see `Tags`), so no transaction waits on a peer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import asyncpg

from runtime.db import GROUP_SETTLED_ALONE, Connection
from runtime.errors import (
    Aborted,
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
    Violations,
)
from services.tasks.allowance import allowance
from services.tasks.coupons import codes, coupon_store, template_store
from services.tasks.coupons.coupon_store import CouponRow, NewCoupon, Refusal
from services.tasks.coupons.templates import Definition, State, Template, from_body
from services.tasks.points import ledger

MAX_SOURCE_TEXT = 128
# Codes offered to one issue (the first not taken is used): 80-bit codes meet a taken one about never.
CODE_ATTEMPTS = 5
# Reads of a template that changed while a coupon was being issued from it.
STALE_ATTEMPTS = 3


class TemplateRetired(FailedPrecondition):
    """The template is retired: it issues nothing more."""


class ValidityEnded(FailedPrecondition):
    """The template's fixed window has ended: a coupon issued now could never be used."""


class MemberLimitReached(FailedPrecondition):
    """The member already holds the template's per-member limit of coupons (used or not)."""


class OutOfStock(ResourceExhausted):
    """The template's stock is all issued."""


class Stale(Exception):
    """The template changed (or was retired) after it was read; read it again."""


@dataclass(frozen=True)
class Source:
    """Why a coupon was given, for the figures (`CouponSource`)."""

    campaign: str = ""
    arm: str = ""


@dataclass(frozen=True)
class MemberTag:
    """The member's value of a template's tag dimension when asked (None: no value)."""

    dimension: str
    value: str | None


NO_TAG = MemberTag("", None)


class TagReader(Protocol):
    async def member_tags(
        self, tenant_id: str, dimension: str, member_ids: Sequence[str]
    ) -> Mapping[str, str]:
        """Each member's current value of `dimension` (members without one left out)."""
        ...


def check_source(v: Violations, path: str, source: Source) -> None:
    for name, value in (("campaign", source.campaign), ("arm", source.arm)):
        if len(value) > MAX_SOURCE_TEXT:
            v.add(f"{path}.{name}", f"must be at most {MAX_SOURCE_TEXT} characters")
        elif not value.isprintable():
            v.add(f"{path}.{name}", "must be printable text")


def content_hash(template_id: str, member_id: str, source: Source) -> str:
    return ledger.content_hash("issue", template_id, member_id, source.campaign, source.arm)


def stock_owner(template_id: str) -> str:
    """The template's stock: an allowance of this owner (services/tasks/allowance)."""
    return f"coupon:{template_id}"


def template_from_row(row: template_store.TemplateRow, issued: int) -> Template:
    return Template(
        definition=from_body(row.template_id, row.body),
        state=State(row.state),
        version=row.version,
        issued=issued,
        used=row.used,
        create_time=row.create_time,
        update_time=row.update_time,
    )


async def tag_for(tags: TagReader, tenant_id: str, d: Definition, member_id: str) -> MemberTag:
    """The member's tag that decides their threshold under `d` (NO_TAG when `d` has none)."""
    if not d.tag_dimension:
        return NO_TAG
    values = await tags.member_tags(tenant_id, d.tag_dimension, [member_id])
    return MemberTag(d.tag_dimension, values.get(member_id))


def first_issue(
    row: CouponRow, template_id: str, member_id: str, source: Source, asked: str | None = None
) -> CouponRow:
    """The coupon a retry returns; ALREADY_EXISTS when the request id asked for something else.
    `asked`: the request's content hash when the caller has it already."""
    if row.content_hash != (asked or content_hash(template_id, member_id, source)):
        raise AlreadyExists(f"request_id {row.request_id!r} was used for a different coupon")
    return row


async def current_template(conn: Connection, template_id: str) -> Template:
    row = await template_store.template(conn, template_id)
    if row is None:
        raise NotFound(f"couponTemplates/{template_id} not found")
    return (await templates_from_rows(conn, [row]))[0]


async def templates_from_rows(conn: Connection, rows: Sequence[template_store.TemplateRow]) -> list[Template]:
    """The templates with what each issued (its stock allowance's usage), in one read."""
    usages = await allowance.usages(conn, [stock_owner(r.template_id) for r in rows])
    return [template_from_row(r, _issued(usages.get(stock_owner(r.template_id)))) for r in rows]


def _issued(usage: allowance.Usage | None) -> int:
    return 0 if usage is None else usage.used


async def issue(
    conn: Connection,
    tenant_id: str,
    template_id: str,
    member_id: str,
    *,
    source: Source,
    key: str,
    tag: MemberTag | None,
    now: dt.datetime,
) -> CouponRow:
    """Issues the template's coupon to the member within the caller's transaction, or returns the
    coupon `key` issued before. Refusals (each writes nothing; the caller's transaction goes on):
    NotFound (no such template), TemplateRetired, ValidityEnded, MemberLimitReached, OutOfStock,
    AlreadyExists (`key` issued another coupon). The member is not checked: the caller knows them.
    `tag`: the member's tag read before the transaction (`tag_for`); None or another dimension
    than the template's current one means the template's own threshold."""
    first = await coupon_store.by_request(conn, key)
    if first is not None:
        return first_issue(first, template_id, member_id, source)
    for _ in range(STALE_ATTEMPTS):
        template = await current_template(conn, template_id)
        try:
            # A savepoint: a refusal or a concurrent first issue of the key leaves the caller's
            # transaction as it was.
            async with _savepoint(conn):
                return await issue_from(conn, tenant_id, template, member_id, source, key, tag, now)
        except asyncpg.UniqueViolationError:
            first = await coupon_store.by_request(conn, key)
            if first is None:
                raise
            return first_issue(first, template_id, member_id, source)
        except Stale:
            continue
    raise too_busy(template_id)


async def issue_from(
    on: asyncpg.Pool | Connection,
    tenant_id: str,
    template: Template,
    member_id: str,
    source: Source,
    key: str,
    tag: MemberTag | None,
    now: dt.datetime,
) -> CouponRow:
    """The writes of one issue from `template` as read (maybe a moment ago), in one statement
    (coupon_store.issue): a key-share lock proving the template still active at that version
    (`Stale` otherwise), the member's holding, the coupon and a unit of stock; or the coupon `key`
    issued before. Raises the refusals of `issue`; a refusal writes nothing, and MemberLimitReached
    and OutOfStock mean `key` issued nothing before. `on`: the pool (the statement commits by
    itself) or a connection in the caller's transaction (which a refusal aborts: hold a savepoint)."""
    coupon = new_coupon(template, member_id, source, key, tag, now)
    return await write_one(on, tenant_id, template, coupon)


def new_coupon(
    template: Template, member_id: str, source: Source, key: str, tag: MemberTag | None, now: dt.datetime
) -> NewCoupon:
    """The coupon an issue from `template` now would write, its threshold `tag`'s (see `issue`);
    TemplateRetired or ValidityEnded when the template can issue none."""
    d = template.definition
    if template.state is State.RETIRED:
        raise TemplateRetired(f"couponTemplates/{d.template_id} is retired")
    valid_from, valid_until = d.validity(now)
    if valid_until <= now:
        raise ValidityEnded(f"couponTemplates/{d.template_id} is valid only until {valid_until.isoformat()}")
    value = tag.value if tag is not None and tag.dimension == d.tag_dimension else None
    assert d.discount is not None
    return NewCoupon(
        template_id=d.template_id,
        template_version=template.version,
        member_id=member_id,
        discount_kind=int(d.discount.kind),
        amount_minor=d.discount.amount_minor,
        percent=d.discount.percent,
        max_discount_minor=d.discount.max_discount_minor,
        threshold_minor=d.threshold_for(value),
        categories=d.categories,
        skus=d.skus,
        valid_from=valid_from,
        valid_until=valid_until,
        source_campaign=source.campaign,
        source_arm=source.arm,
        request_id=key,
        content_hash=content_hash(d.template_id, member_id, source),
        issue_time=now,
    )


async def write_one(
    on: asyncpg.Pool | Connection, tenant_id: str, template: Template, coupon: NewCoupon
) -> CouponRow:
    """`coupon` written as `issue_from` writes it (its refusals raised)."""
    d = template.definition
    written = await coupon_store.issue(
        on, tenant_id, coupon, codes.new_codes(CODE_ATTEMPTS), d.per_member_limit, stock_owner(d.template_id)
    )
    if isinstance(written, CouponRow):
        source = Source(coupon.source_campaign, coupon.source_arm)
        return first_issue(written, d.template_id, coupon.member_id, source, coupon.content_hash)
    if written is Refusal.STALE:
        raise Stale()
    if written is Refusal.LIMIT:
        raise MemberLimitReached(
            f"members/{coupon.member_id} already holds {d.per_member_limit} coupon(s) of "
            f"couponTemplates/{d.template_id}, the most one member may"
        )
    if written is Refusal.OUT_OF_STOCK:
        raise OutOfStock(f"couponTemplates/{d.template_id} has no coupons left")
    raise RuntimeError(f"{CODE_ATTEMPTS} random coupon codes in a row were taken")


async def write_group(
    pool: asyncpg.Pool, tenant_id: str, template: Template, coupons: Sequence[NewCoupon]
) -> list[CouponRow | BaseException]:
    """`coupons` (of `template` at its version) written as one statement when all of them can be
    (coupon_store.issue_group), else each as `write_one` writes it: one outcome per coupon, in
    order, a refusal as the exception `write_one` raises. Any other error of a statement (the
    database gone) is every caller's: those issued before it find their coupon on a retry."""
    d = template.definition
    if len(coupons) > 1:
        try:
            offered = codes.new_codes(len(coupons))
            stock = stock_owner(d.template_id)
            written = await coupon_store.issue_group(
                pool, tenant_id, coupons, offered, d.per_member_limit, stock
            )
        except GROUP_SETTLED_ALONE:
            # A request id met twice or issued meanwhile, or a conflict (a deadlock with a caller's
            # transaction): one by one, each gets the answer it gets alone.
            written = None
        if written is not None:
            return list(written)
    outcomes: list[CouponRow | BaseException] = []
    for coupon in coupons:
        try:
            outcomes.append(await write_one(pool, tenant_id, template, coupon))
        except (DomainError, Stale, asyncpg.UniqueViolationError) as refusal:
            outcomes.append(refusal)
    return outcomes


@asynccontextmanager
async def _savepoint(conn: Connection) -> AsyncIterator[None]:
    """A savepoint in the caller's transaction (opened by a plain BEGIN, so by hand): an error
    inside rolls back to it and propagates; the transaction goes on."""
    await conn.execute("SAVEPOINT coupon_issue")
    try:
        yield
    except Exception:
        await conn.execute("ROLLBACK TO SAVEPOINT coupon_issue")
        raise
    await conn.execute("RELEASE SAVEPOINT coupon_issue")


def too_busy(template_id: str) -> Exception:
    return Aborted(f"couponTemplates/{template_id} kept changing while a coupon was issued; retry")
