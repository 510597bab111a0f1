"""Coupon issuances between protobuf and the domain (IssueCouponToAudience, GetCouponIssuance,
IssueCouponIssuancePage)."""

from __future__ import annotations

from google.protobuf import timestamp_pb2
from memberops.tasks.v1 import coupons_pb2, tasks_service_pb2

from runtime import checks
from runtime.errors import InvalidArgument, Violations
from services.tasks.coupons.issuing import Source, check_source
from services.tasks.coupons.templates import TEMPLATE_ID
from services.tasks.issuances.issuance_store import IssuanceRow
from services.tasks.issuances.issuances import Asked
from services.tasks.points import ledger

NAME_PREFIX = "couponIssuances/"


def _resource_id(value: str, prefix: str, violations: Violations, path: str) -> str:
    """The id in `{prefix}{id}` (a natural id: a lower-case letter, then a-z, 0-9, _ or -)."""
    found = value.removeprefix(prefix)
    if not value.startswith(prefix) or not TEMPLATE_ID.match(found):
        violations.add(path, f"must be {prefix}{{id}}")
    return found


def _audience_id(value: str, violations: Violations) -> str:
    found = value.removeprefix("audiences/")
    if not value.startswith("audiences/") or not checks.NATURAL_ID.match(found):
        violations.add("audience", "must be audiences/{audience_id}")
    return found


def asked_from_proto(request: tasks_service_pb2.IssueCouponToAudienceRequest) -> Asked:
    v = Violations()
    template_id = _resource_id(request.template, "couponTemplates/", v, "template")
    audience_id = _audience_id(request.audience, v)
    source = Source(request.source.campaign, request.source.arm)
    check_source(v, "source", source)
    ledger.check_id(v, "request_id", request.request_id)
    if "/" in request.request_id:
        v.add("request_id", "must not contain /")
    v.raise_if_any()
    return Asked(request.request_id, template_id, audience_id, source)


def request_id_from_name(name: str, path: str = "name") -> str:
    """The request id in `couponIssuances/{request_id}`."""
    request_id = name.removeprefix(NAME_PREFIX)
    v = Violations()
    ledger.check_id(v, path, request_id)
    if not name.startswith(NAME_PREFIX) or v or "/" in request_id:
        raise InvalidArgument.field(path, "must be couponIssuances/{request_id}")
    return request_id


def _stamp(value: object) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)  # type: ignore[arg-type]
    return stamp


def issuance_to_proto(row: IssuanceRow) -> coupons_pb2.CouponIssuance:
    return coupons_pb2.CouponIssuance(
        name=f"{NAME_PREFIX}{row.request_id}",
        template_id=row.template_id,
        audience=f"audiences/{row.audience_id}",
        snapshot=f"snapshots/{row.snapshot_id}",
        source=coupons_pb2.CouponSource(campaign=row.campaign, arm=row.arm),
        done=row.done,
        members=row.members,
        issued=row.issued,
        skipped=row.skipped,
        out_of_stock=row.out_of_stock,
        create_time=_stamp(row.create_time),
        update_time=_stamp(row.update_time),
        end=row.ended,  # type: ignore[arg-type]
        not_reached=not_reached(row),
    )


def not_reached(row: IssuanceRow) -> int:
    """Members of the snapshot a done operation never reached (it ended early); 0 while it runs."""
    if not row.done:
        return 0
    return max(row.members - row.issued - row.skipped - row.out_of_stock, 0)
