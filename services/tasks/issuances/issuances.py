"""Coupon issuances to an audience, free of gRPC and SQL: starting one, reading it, and issuing one
page of its snapshot.

Starting freezes the audience into a snapshot (audience's CreateSnapshot, idempotent by a request
id derived from the operation's), writes the operation's row and starts its workflow in that row's
transaction, so a start that fails leaves no row; a retry finds the row (the same content answers
the same operation, other content is ALREADY_EXISTS) and makes sure the workflow runs.

The workflow hands the snapshot's pages back one at a time (`issue_page`). Each member's coupon is
issued in a transaction of its own through `coupons.issuing.issue`, with the request id
`couponIssuances/{request_id}/{member_id}`, so a page issued again issues nothing twice; the page's
counts are added to the row with the page's own row, once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from runtime.db import Database
from runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.tasks.coupons import issuing
from services.tasks.coupons.issuing import MemberTag, Source, TagReader
from services.tasks.coupons.templates import State, Template
from services.tasks.issuances import issuance_store
from services.tasks.issuances.issuance_store import Counts, Ended, IssuanceRow

# Members a page holds: each is one short transaction, so a page takes well under a second.
PAGE_SIZE = 200
# Members of a page issued at the same time.
LANES = 4


@dataclass(frozen=True)
class Asked:
    """IssueCouponToAudience, checked."""

    request_id: str
    template_id: str
    audience_id: str
    source: Source


class Snapshots(Protocol):
    async def create_snapshot(
        self, tenant_id: str, audience_id: str, request_id: str
    ) -> tuple[str, int] | None:
        """The snapshot's id and member count (None: no such audience)."""
        ...

    async def snapshot_page(
        self, tenant_id: str, snapshot_id: str, page_token: str, size: int
    ) -> tuple[list[str], str] | None:
        """The page's member ids and the next page's token (None: the token names no page)."""
        ...


class Starter(Protocol):
    async def start(self, tenant_id: str, request_id: str) -> None:
        """Starts the operation's workflow unless it runs or ran (Unavailable: Temporal did not
        answer)."""
        ...


def snapshot_request_id(request_id: str) -> str:
    """The snapshot's request id: one per operation, within audience's 128 characters."""
    return f"couponIssuance-{hashlib.sha256(request_id.encode()).hexdigest()[:40]}"


def coupon_key(request_id: str, member_id: str) -> str:
    return f"couponIssuances/{request_id}/{member_id}"


def _same(row: IssuanceRow, asked: Asked) -> bool:
    return (row.template_id, row.audience_id, row.campaign, row.arm) == (
        asked.template_id,
        asked.audience_id,
        asked.source.campaign,
        asked.source.arm,
    )


def _page_digest(page_token: str) -> str:
    return hashlib.sha256(page_token.encode()).hexdigest()


class Issuances:
    def __init__(self, db: Database, snapshots: Snapshots, tags: TagReader, starter: Starter) -> None:
        self._db = db
        self._snapshots = snapshots
        self._tags = tags
        self._starter = starter

    async def start(self, tenant_id: str, asked: Asked) -> IssuanceRow:
        existing = await self._existing(tenant_id, asked)
        if existing is not None:
            return existing
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            template = await issuing.current_template(conn, asked.template_id)
        if template.state is State.RETIRED:
            raise FailedPrecondition(f"couponTemplates/{asked.template_id} is retired")
        snapshot = await self._snapshots.create_snapshot(
            tenant_id, asked.audience_id, snapshot_request_id(asked.request_id)
        )
        if snapshot is None:
            raise NotFound(f"audiences/{asked.audience_id} not found")
        snapshot_id, members = snapshot
        async with self._db.transaction(tenant_id) as conn:
            row = await issuance_store.insert(
                conn,
                tenant_id,
                asked.request_id,
                asked.template_id,
                asked.audience_id,
                snapshot_id,
                asked.source.campaign,
                asked.source.arm,
                members,
            )
            if row is not None and not row.done:
                # In the row's transaction: a start Temporal refused leaves no row behind.
                await self._starter.start(tenant_id, asked.request_id)
        if row is None:
            # A concurrent start of the same request id wrote it first.
            existing = await self._existing(tenant_id, asked)
            assert existing is not None
            return existing
        return row

    async def _existing(self, tenant_id: str, asked: Asked) -> IssuanceRow | None:
        """The operation of the request id (its workflow started again unless done), None if none."""
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            row = await issuance_store.issuance(conn, asked.request_id)
        if row is None:
            return None
        if not _same(row, asked):
            raise AlreadyExists(
                f"request_id {asked.request_id!r} started couponIssuances/{asked.request_id} "
                "with other content"
            )
        if not row.done:
            await self._starter.start(tenant_id, asked.request_id)
        return row

    async def get(self, tenant_id: str, request_id: str) -> IssuanceRow:
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            row = await issuance_store.issuance(conn, request_id)
        if row is None:
            raise NotFound(f"couponIssuances/{request_id} not found")
        return row

    async def issue_page(
        self, tenant_id: str, request_id: str, page_token: str, now: dt.datetime
    ) -> tuple[IssuanceRow, str]:
        """Issues the page's members their coupon and counts the page (once); the operation and
        the next page's token ("" once done)."""
        row = await self.get(tenant_id, request_id)
        if row.done:
            return row, ""
        page = await self._snapshots.snapshot_page(tenant_id, row.snapshot_id, page_token, PAGE_SIZE)
        if page is None:
            raise InvalidArgument.field("page_token", f"is not a page of snapshots/{row.snapshot_id}")
        members, next_token = page
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            template = await issuing.current_template(conn, row.template_id)
        counts, ended = await self._issue(tenant_id, row, template, members, now)
        if ended is Ended.RUNNING and not next_token:
            ended = Ended.COMPLETED
        async with self._db.transaction(tenant_id) as conn:
            counted = await issuance_store.count_page(
                conn, tenant_id, request_id, _page_digest(page_token), counts, ended
            )
            if counted is None:
                # Counted before (a retried page): what it did then stands.
                counted = await issuance_store.issuance(conn, request_id)
        assert counted is not None
        return counted, "" if counted.done else next_token

    async def _issue(
        self,
        tenant_id: str,
        row: IssuanceRow,
        template: Template,
        members: Sequence[str],
        now: dt.datetime,
    ) -> tuple[Counts, Ended]:
        """Each member's coupon; the counts, and how the operation ended if the template stopped
        issuing (retired, or its validity ended; RUNNING otherwise). Members after that are not
        reached, so not counted."""
        dimension = template.definition.tag_dimension
        values = await self._tags.member_tags(tenant_id, dimension, members) if dimension else {}
        source = Source(row.campaign, row.arm)
        outcomes: list[str] = []
        ends: list[Ended] = []
        queue = list(reversed(members))

        async def lane() -> None:
            while queue and not ends:
                member_id = queue.pop()
                tag = MemberTag(dimension, values.get(member_id)) if dimension else None
                outcome = await self._issue_one(tenant_id, row, member_id, source, tag, now)
                if isinstance(outcome, Ended):
                    ends.append(outcome)
                else:
                    outcomes.append(outcome)

        await asyncio.gather(*(lane() for _ in range(LANES)))
        counts = Counts(
            issued=outcomes.count("issued"),
            skipped=outcomes.count("skipped"),
            out_of_stock=outcomes.count("out_of_stock"),
        )
        return counts, ends[0] if ends else Ended.RUNNING

    async def _issue_one(
        self,
        tenant_id: str,
        row: IssuanceRow,
        member_id: str,
        source: Source,
        tag: MemberTag | None,
        now: dt.datetime,
    ) -> str | Ended:
        try:
            async with self._db.transaction(tenant_id) as conn:
                await issuing.issue(
                    conn,
                    tenant_id,
                    row.template_id,
                    member_id,
                    source=source,
                    key=coupon_key(row.request_id, member_id),
                    tag=tag,
                    now=now,
                )
        except issuing.MemberLimitReached:
            return "skipped"
        except issuing.OutOfStock:
            return "out_of_stock"
        except issuing.TemplateRetired:
            return Ended.TEMPLATE_RETIRED
        except issuing.ValidityEnded:
            return Ended.VALIDITY_ENDED
        except AlreadyExists:
            # The member's key was taken by another coupon (an IssueCoupon that chose it).
            return "skipped"
        return "issued"
