"""The coupon template catalog: create, update (versions), read, list and retire templates.

A claim audience must exist when a template names one (asked of the audience service). The stock
is an allowance of its own (owner `coupon:<template_id>`, services/tasks/allowance): created with
the template, resized by an update (never below what was issued), read for `issued`. Issuing
reads templates through `current`, which keeps what it read for a moment: each issue key-share
locks the template's row at the version and state it used (tasks.issue_coupon), so a stale
read only costs a retry.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from runtime import page_tokens
from runtime.db import Connection, Database
from runtime.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.tasks.allowance import allowance
from services.tasks.coupons import template_store
from services.tasks.coupons.issuing import stock_owner, templates_from_rows
from services.tasks.coupons.templates import Definition, State, Template, content_hash, to_body, validate
from services.tasks.points import ledger

CACHE_SECONDS = 2.0


def _stock(d: Definition) -> int:
    """The allowance's total: the stock, or one never used up for an unlimited template."""
    return d.total_stock or allowance.UNLIMITED


class Audiences(Protocol):
    async def audience_exists(self, tenant_id: str, audience_id: str) -> bool: ...


class CouponTemplates:
    def __init__(self, db: Database, audiences: Audiences) -> None:
        self._db = db
        self._audiences = audiences
        self._recent: dict[tuple[str, str], tuple[float, Template]] = {}
        self._reading: dict[tuple[str, str], asyncio.Future[Template]] = {}

    async def _check_audience(self, tenant_id: str, d: Definition) -> None:
        if d.claim_audience_id and not await self._audiences.audience_exists(tenant_id, d.claim_audience_id):
            raise InvalidArgument.field(
                "template.claim_audience", f"audiences/{d.claim_audience_id} does not exist"
            )

    async def create(self, tenant_id: str, d: Definition) -> Template:
        validate(d)
        await self._check_audience(tenant_id, d)
        body = to_body(d)
        digest = content_hash(body)
        async with self._db.transaction(tenant_id) as conn:
            if await template_store.insert_template(conn, tenant_id, d.template_id, body, digest):
                await allowance.create(conn, tenant_id, stock_owner(d.template_id), _stock(d))
            else:
                row = await template_store.template(conn, d.template_id)
                assert row is not None
                if row.version != 1 or row.content_hash != digest:
                    raise AlreadyExists(f"couponTemplates/{d.template_id} exists with other content")
            return await self._read(conn, d.template_id)

    async def _read(self, conn: Connection, template_id: str) -> Template:
        row = await template_store.template(conn, template_id)
        if row is None:
            raise NotFound(f"couponTemplates/{template_id} not found")
        return (await templates_from_rows(conn, [row]))[0]

    async def update(self, tenant_id: str, d: Definition, expected_version: int) -> Template:
        validate(d)
        if expected_version < 0:
            raise InvalidArgument.field("expected_version", "must be 0 (any) or a version number")
        await self._check_audience(tenant_id, d)
        assert d.discount is not None
        body = to_body(d)
        digest = content_hash(body)
        name = f"couponTemplates/{d.template_id}"
        async with self._db.transaction(tenant_id) as conn:
            row = await template_store.lock_template(conn, d.template_id)
            if row is None:
                raise NotFound(f"{name} not found")
            if row.content_hash != digest:
                if expected_version and expected_version != row.version:
                    raise Aborted(f"{name} is at version {row.version}, not {expected_version}")
                if row.discount_kind != d.discount.kind:
                    raise InvalidArgument.field(
                        "template.discount", f"the discount kind of {name} cannot change"
                    )
                if row.state == State.RETIRED:
                    raise FailedPrecondition(f"{name} is retired")
                owner = stock_owner(d.template_id)
                if await allowance.resize(conn, owner, _stock(d)) is None:
                    usage = await allowance.usage(conn, owner)
                    issued = 0 if usage is None else usage.used
                    raise FailedPrecondition(
                        f"total_stock {d.total_stock} is below the {issued} coupons already issued"
                    )
                await template_store.add_version(
                    conn, tenant_id, d.template_id, row.version + 1, body, digest
                )
            template = await self._read(conn, d.template_id)
        self._recent.pop((tenant_id, d.template_id), None)
        return template

    async def get(self, tenant_id: str, template_id: str) -> Template:
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            return await self._read(conn, template_id)

    async def current(self, tenant_id: str, template_id: str, *, fresh: bool = False) -> Template:
        """The template as read at most CACHE_SECONDS ago (now, when `fresh`). When what was read
        is too old, the callers meanwhile wait for one read (at concurrency 16 each expiry cost
        sixteen reads); a `fresh` caller, which met a newer version, reads on its own."""
        key = (tenant_id, template_id)
        hit = self._recent.get(key)
        if hit is not None and not fresh and time.monotonic() - hit[0] < CACHE_SECONDS:
            return hit[1]
        if fresh:
            return await self._reread(tenant_id, template_id)
        reading = self._reading.get(key)
        if reading is None:
            reading = asyncio.ensure_future(self._reread(tenant_id, template_id))
            self._reading[key] = reading
            reading.add_done_callback(lambda done: self._read_ended(key, done))
        return await asyncio.shield(reading)

    def _read_ended(self, key: tuple[str, str], done: asyncio.Future[Template]) -> None:
        """A shared read ended: the next expiry starts another; its error, if every caller waiting
        for it was cancelled, is dropped here rather than logged as never retrieved."""
        self._reading.pop(key, None)
        if not done.cancelled():
            done.exception()

    async def _reread(self, tenant_id: str, template_id: str) -> Template:
        template = await self.get(tenant_id, template_id)
        self._recent[(tenant_id, template_id)] = (time.monotonic(), template)
        return template

    async def list_page(
        self, tenant_id: str, size: int, token: str, show_retired: bool
    ) -> tuple[list[Template], str]:
        limit = ledger.page_size(size)
        scope = "couponTemplates/all" if show_retired else "couponTemplates/active"
        after = page_tokens.decode_one(token, scope, str) or ""
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            rows = await template_store.templates(
                conn, after, limit + 1, None if show_retired else State.ACTIVE
            )
            page = await templates_from_rows(conn, rows[:limit])
        return page, page_tokens.encode(scope, page[-1].template_id) if len(rows) > limit else ""

    async def retire(self, tenant_id: str, template_id: str) -> Template:
        async with self._db.transaction(tenant_id) as conn:
            await template_store.retire_template(conn, template_id)
            template = await self._read(conn, template_id)
        self._recent.pop((tenant_id, template_id), None)
        return template
