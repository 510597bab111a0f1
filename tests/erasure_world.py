"""A member with distinctive personal data for the erasure tests, and the scan that looks for it in
every table of every schema of the database (tests/erasure_helpers.py scans one schema per column)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.protobuf import struct_pb2
from google.type import date_pb2
from memberops.tagging.v1 import facts_pb2, member_pb2, tagging_service_pb2

from runtime.db import Database
from tests.conftest import UMBRELLA, unique
from tests.tagging.facts_helpers import PAID, a_refund, an_event, an_order, stamp

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub

# The erasure tests write in initech, where no feed follower of the suite's tasks service writes
# on its own: a follower that read an order of the member before the erasure and wrote after it
# could leave a row under the member id whatever the erasure does (see docs/tagging.md).
METADATA = UMBRELLA
REGISTERED = dt.datetime(2024, 3, 5, 8, 0, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Person:
    """A member whose every personal datum is a string found nowhere else in the database."""

    member_id: str = field(default_factory=lambda: unique("erase"))
    phone: str = field(default_factory=lambda: f"+86139{uuid.uuid4().int % 10**8:08d}")
    email: str = field(default_factory=lambda: f"{unique('zeb')}@example.com")
    nickname: str = field(default_factory=lambda: unique("Zebulon"))
    openid: str = field(default_factory=lambda: unique("wxid"))
    # The member as a WeCom external contact (a needle), and the staff member owning the
    # relationship: the employee's own id, no datum of the member's (a WeCom message's log row
    # keeps its sender), but cleared from the member row with the contact.
    wecom_external_userid: str = field(default_factory=lambda: unique("wmext"))
    wecom_staff_userid: str = field(default_factory=lambda: unique("staff"))
    # An attribute selecting the member alone (audiences of the tests: tests.audience.helpers.in_batch).
    batch: str = field(default_factory=lambda: unique("batch"))

    @property
    def needles(self) -> tuple[str, ...]:
        return (
            self.member_id,
            self.phone,
            self.email,
            self.nickname,
            self.openid,
            self.wecom_external_userid,
        )

    def member(self) -> member_pb2.Member:
        attributes = struct_pb2.Struct()
        attributes.update({"wechat_openid": self.openid, "shoe_size": 38, "batch": self.batch})
        return member_pb2.Member(
            member_id=self.member_id,
            profile=member_pb2.Profile(
                gender=member_pb2.GENDER_FEMALE,
                birthday=date_pb2.Date(year=1991, month=4, day=17),
                city="Hangzhou",
                city_tier=member_pb2.CITY_TIER_1,
                register_time=stamp(REGISTERED),
                register_channel="wechat_mini",
                nickname=self.nickname,
                level="gold",
            ),
            attributes=attributes,
            contact=member_pb2.Contact(
                phone=self.phone,
                email=self.email,
                preferred_channel=member_pb2.CHANNEL_SMS,
                time_zone="Asia/Shanghai",
                wecom_external_userid=self.wecom_external_userid,
                wecom_staff_userid=self.wecom_staff_userid,
            ),
        )


@dataclass(frozen=True)
class Facts:
    order_ids: tuple[str, ...]
    amounts: tuple[int, ...]


async def create_person(stub: Stub, person: Person, metadata: Any = METADATA) -> Facts:
    """The member with two orders (one partly refunded), a search naming them and a cart."""
    await stub.UpsertMember(
        tagging_service_pb2.UpsertMemberRequest(member=person.member()), metadata=metadata
    )
    orders = [
        an_order(person.member_id, unique("o"), amount_minor=25_800),
        an_order(
            person.member_id, unique("o"), amount_minor=9_900, paid_time=stamp(PAID + dt.timedelta(days=3))
        ),
    ]
    for order in orders:
        await stub.RecordOrder(tagging_service_pb2.RecordOrderRequest(order=order), metadata=metadata)
    refund = a_refund(
        orders[0].order_id, amount_minor=2_000, lines=[facts_pb2.RefundLine(line_id="2", quantity=1)]
    )
    await stub.RecordRefund(tagging_service_pb2.RecordRefundRequest(refund=refund), metadata=metadata)
    events = [
        an_event(person.member_id, kind=facts_pb2.EVENT_KIND_SEARCH, query=f"{person.nickname} lipstick"),
        an_event(person.member_id),
    ]
    await stub.RecordEvents(tagging_service_pb2.RecordEventsRequest(events=events), metadata=metadata)
    return Facts(tuple(o.order_id for o in orders), tuple(o.amount_minor for o in orders))


async def erase(
    stub: Stub, member_id: str, request_id: str, metadata: Any = METADATA
) -> tagging_service_pb2.MemberErasure:
    request = tagging_service_pb2.EraseMemberRequest(
        member=f"members/{member_id}", request_id=request_id, operator="dpo@acme", reason="DSR-2026-0042"
    )
    return await stub.EraseMember(request, metadata=metadata, timeout=60)


async def traces(db: Database, needles: Sequence[str]) -> dict[str, int]:
    """Rows holding any of `needles` (anywhere in the row's text), per table, over every table of
    every schema: the services', and any a later migration or service adds. Read as the login role,
    which must be one that row-level security does not restrict, or the scan would see nothing."""
    async with db.pool.acquire() as conn:
        sees_all = await conn.fetchval(
            "SELECT rolsuper OR rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = current_user"
        )
        assert sees_all, "the scan must run as a role that row-level security does not restrict"
        tables = await conn.fetch(
            """SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                 AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
               ORDER BY 1"""
        )
        found: dict[str, int] = {}
        for table in tables:
            count = await conn.fetchval(
                f"""SELECT count(*) FROM {table["name"]} AS r
                    WHERE EXISTS (SELECT 1 FROM unnest($1::text[]) AS n WHERE strpos(r::text, n) > 0)""",
                list(needles),
            )
            if count:
                found[table["name"]] = count
    return found


async def audit_row(db: Database, tenant_id: str, request_id: str) -> Any:
    return await db.pool.fetchrow(
        "SELECT * FROM tagging.member_erasures WHERE tenant_id = $1 AND request_id = $2",
        tenant_id,
        request_id,
    )
