"""The issue_coupon step as data: its validation (a template id; coupon fields only after such a
step; member journeys only), its stored form (a definition without it keeps its content and hash),
the coupon's fields as a message shows them, and how the report reads coupons per arm."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from memberops.tasks.v1 import coupons_pb2

from runtime.errors import InvalidArgument
from workflows.journeys import coupons, loading, report_coupons
from workflows.journeys.definition import (
    Broadcast,
    Entry,
    EventMatch,
    IssueCoupon,
    JourneyDefinition,
    Send,
    Step,
    TagField,
    Template,
    coupon_fields_used,
    validate,
)
from workflows.journeys.payloads import IssuedCoupon
from workflows.journeys.report import ArmFigures, JourneyReport
from workflows.journeys.shipped import NEW_CUSTOMER
from workflows.journeys.steps.issue_coupon import coupon_arm

COUPON = Template(
    body="Take {coupon_discount} off {coupon_threshold} with {coupon_code} until {coupon_valid_until}"
)


def journey(*steps: Step, **changes: Any) -> JourneyDefinition:
    base = JourneyDefinition(
        key="j",
        name="j",
        entry=Entry(event=EventMatch(kind="registered")),
        steps=steps,
        templates={"hello": Template(body="Hi {nickname}"), "coupon": COUPON},
    )
    return dataclasses.replace(base, **changes)


def violations(definition: JourneyDefinition) -> list[str]:
    with pytest.raises(InvalidArgument) as caught:
        validate(definition)
    return [v.field for v in caught.value.violations]


def test_a_coupon_send_after_an_issue_step_is_valid() -> None:
    validate(
        journey(
            Step(id="give", issue_coupon=IssueCoupon(template="spring-20-off")),
            Step(id="tell", send=Send(template="coupon")),
        )
    )


def test_a_bad_template_id_is_named() -> None:
    for bad in ("", "Spring", "couponTemplates/spring", "x" * 64, "9lives"):
        assert violations(journey(Step(id="give", issue_coupon=IssueCoupon(template=bad)))) == [
            "steps[0].issue_coupon.template"
        ]


def test_coupon_fields_need_an_earlier_issue_step() -> None:
    alone = journey(Step(id="tell", send=Send(template="coupon")))
    assert violations(alone) == ["steps[0].send.template"]
    after = journey(
        Step(id="tell", send=Send(template="coupon")),
        Step(id="give", issue_coupon=IssueCoupon(template="spring-20-off")),
    )
    assert violations(after) == ["steps[0].send.template"]
    with pytest.raises(InvalidArgument) as caught:
        validate(alone)
    assert "coupon_code" in caught.value.violations[0].description


def test_a_tag_field_cannot_take_a_coupon_fields_name() -> None:
    shadow = Template(
        body="{coupon_threshold}", tag_fields=(TagField(name="coupon_threshold", dimension="spend"),)
    )
    definition = journey(Step(id="tell", send=Send(template="hello")), templates={"hello": shadow})
    assert violations(definition) == ["templates['hello'].tag_fields[0].name"]


def test_a_stored_tag_field_named_like_a_coupon_field_still_renders_without_a_coupon() -> None:
    # Versions stored before coupons existed used a tag field `coupon_threshold`: it is theirs.
    old = Template(
        body="{coupon_threshold}", tag_fields=(TagField(name="coupon_threshold", dimension="spend"),)
    )
    assert coupon_fields_used(old) == []
    assert coupon_fields_used(COUPON) == [
        "coupon_code",
        "coupon_threshold",
        "coupon_discount",
        "coupon_valid_until",
    ]


def test_a_broadcast_issues_no_coupons() -> None:
    definition = journey(
        Step(id="give", issue_coupon=IssueCoupon(template="spring-20-off")),
        entry=Entry(broadcast=Broadcast(audience="vip")),
    )
    assert violations(definition) == ["steps[0].issue_coupon"]


def test_the_stored_form_omits_an_unset_issue_coupon_and_reads_format_2() -> None:
    plain = journey(Step(id="hello", send=Send(template="hello")))
    assert "issue_coupon" not in loading.to_json(plain)
    assert loading.from_stored(loading.to_json(plain), 2) == plain
    assert loading.from_stored(loading.to_json(NEW_CUSTOMER), loading.FORMAT_VERSION) == NEW_CUSTOMER
    assert loading.from_json(loading.to_json(NEW_CUSTOMER)) == NEW_CUSTOMER


def test_a_coupon_shows_its_terms_in_major_units_and_the_members_last_day() -> None:
    coupon = coupons_pb2.Coupon(code="ABCD2345EFGH6789", threshold_minor=10_050)
    coupon.amount_off.amount_minor = 2_000
    # Valid until 16:00 UTC on the 14th: midnight of the 15th in Shanghai, so the 14th is the last day.
    coupon.valid_until.FromDatetime(dt.datetime(2026, 12, 14, 16, 0, tzinfo=dt.UTC))
    issued = coupons.issued(coupon)
    assert coupons.field_values(issued, ZoneInfo("Asia/Shanghai")) == {
        "coupon_code": "ABCD2345EFGH6789",
        "coupon_threshold": "100.50",
        "coupon_discount": "20",
        "coupon_valid_until": "2026-12-14",
    }
    assert coupons.field_values(issued, ZoneInfo("UTC"))["coupon_valid_until"] == "2026-12-14"
    percent = coupons_pb2.Coupon(code="X", percent_off=coupons_pb2.PercentOff(percent=15))
    assert coupons.issued(percent).discount == "15%"
    free = coupons_pb2.Coupon(code="X", free_shipping=coupons_pb2.FreeShipping())
    assert coupons.issued(free).discount == "free shipping"
    assert coupons.field_values(IssuedCoupon(code="X"), ZoneInfo("UTC"))["coupon_valid_until"] == ""


def test_request_ids_are_one_per_tenant_journey_enrolment_and_step_and_fit() -> None:
    ids = {
        coupons.request_id("acme", "j", 1, "give"),
        coupons.request_id("globex", "j", 1, "give"),
        coupons.request_id("acme", "k", 1, "give"),
        coupons.request_id("acme", "j", 2, "give"),
        coupons.request_id("acme", "j", 1, "again"),
    }
    assert len(ids) == 5
    long = coupons.request_id("t" * 63, "k" * 63, 2**62, "s" * 63)
    assert len(long) <= coupons.MAX_REQUEST_ID
    assert long != coupons.request_id("t" * 63, "k" * 63, 2**62, "s" * 62 + "x")


def test_a_coupons_source_arm_is_its_members_split_arms_or_treated() -> None:
    assert coupon_arm(()) == "treated"
    assert coupon_arm(("pick:a", "then:b")) == "pick:a,then:b"
    long = ("a" * 63 + ":" + "x" * 20, "b" * 63 + ":" + "y" * 20)
    assert coupon_arm(long) == long[1]  # the earliest split arm is dropped to fit 128 characters


def test_the_report_counts_a_coupon_under_treated_and_each_split_arm_it_names() -> None:
    report = JourneyReport(
        journey_key="j",
        arms=(ArmFigures("treated"), ArmFigures("holdout"), ArmFigures("pick:a"), ArmFigures("pick:b")),
    )
    stats = {
        "treated": report_coupons.CouponCount(2, 1),
        "pick:a": report_coupons.CouponCount(5, 3),
        "pick:b,then:x": report_coupons.CouponCount(4, 0),
    }
    counted = {
        a.arm: (a.coupons_issued, a.coupons_used) for a in report_coupons.with_coupons(report, stats).arms
    }
    assert counted == {"treated": (11, 4), "holdout": (0, 0), "pick:a": (5, 3), "pick:b": (4, 0)}
    unavailable = report_coupons.with_coupons(report, None)
    assert unavailable.coupons_unavailable and unavailable.arms == report.arms
