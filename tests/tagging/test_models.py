"""Built-in models and the seeded catalog, against hand-computed expectations on real data.

RFM compares members with each other, so those tests run in the tenant `initech`, which no other
test writes to; the others use fresh members in the shared tenant.
"""

from __future__ import annotations

import datetime as dt
import statistics
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import json_format
from memberops.tagging.v1 import facts_pb2, member_pb2, models_pb2, rules_pb2, tagging_service_pb2, tags_pb2

from runtime.db import Database
from services.tagging import builtins, server
from tests.conftest import ACME, INITECH, TENANT_ACME, unique
from tests.grpc_helpers import field_violations
from tests.tagging.facts_helpers import an_event, record_order, stamp
from tests.tagging.test_catalog import create, dimension, update
from tests.tagging.test_member_tags import recompute

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub

BUILT_IN = [spec.dimension for spec in builtins.definitions()]


def days_ago(days: float, hour: int | None = None) -> dt.datetime:
    """A moment `days` whole days back, half a day from any day boundary so day counts are stable."""
    moment = dt.datetime.now(dt.UTC) - dt.timedelta(days=days, hours=12)
    return moment.replace(hour=hour, minute=30) if hour is not None else moment


async def member(stub: Stub, metadata: Any, **fields: Any) -> str:
    member_id = unique()
    message = member_pb2.Member(member_id=member_id, **fields)
    await stub.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=message), metadata=metadata)
    return member_id


def line(
    category: str, quantity: int = 1, unit_price: int = 10_000, line_id: str = "1"
) -> facts_pb2.OrderLine:
    return facts_pb2.OrderLine(
        line_id=line_id,
        sku=f"sku-{category}",
        category=category,
        quantity=quantity,
        unit_price_minor=unit_price,
    )


async def order(
    stub: Stub, metadata: Any, member_id: str, paid: dt.datetime, amount: int, *lines: facts_pb2.OrderLine
) -> str:
    message = facts_pb2.Order(
        order_id=unique("o"),
        member_id=member_id,
        paid_time=stamp(paid),
        amount_minor=amount,
        lines=list(lines) or [line("misc", unit_price=amount)],
    )
    await record_order(stub, message, metadata=metadata)
    return message.order_id


async def tags(stub: Stub, metadata: Any, member_id: str, name: str) -> list[str]:
    reply = await stub.GetMemberTags(
        tagging_service_pb2.GetMemberTagsRequest(member=f"members/{member_id}"), metadata=metadata
    )
    return sorted(t.value for t in reply.tags if t.dimension == name)


# --- the seeded catalog ------------------------------------------------------------------------


async def test_every_tenant_gets_the_built_in_catalog(tagging_stub: Stub) -> None:
    reply = await tagging_stub.ListTagDefinitions(
        tagging_service_pb2.ListTagDefinitionsRequest(page_size=1000), metadata=ACME
    )
    listed = {d.dimension: d for d in reply.tag_definitions}
    assert set(BUILT_IN) <= set(listed)
    rfm = listed["rfm_segment"]
    assert rfm.kind == tags_pb2.TAG_KIND_MODEL
    assert rfm.model.rfm_mean_split.window_days == 365
    assert [v.value for v in rfm.values][:2] == ["important_value", "important_development"]
    assert [v.value for v in listed["age_band"].values] == ["18-25", "26-35", "36-45", "46-55", "56+"]


async def test_seeding_again_changes_nothing_and_keeps_a_tenants_own_version(
    tagging_stub: Stub, db: Database
) -> None:
    current = await tagging_stub.GetTagDefinition(
        tagging_service_pb2.GetTagDefinitionRequest(name="tagDefinitions/repurchase_due"), metadata=ACME
    )
    changed = tags_pb2.TagDefinition()
    changed.CopyFrom(current)
    changed.model.repurchase_due.tolerance_percent = (
        120 if current.model.repurchase_due.tolerance_percent != 120 else 130
    )
    updated = await update(tagging_stub, changed)
    assert updated.version == current.version + 1
    await server.seed_builtins(db, frozenset({TENANT_ACME}))
    again = await tagging_stub.GetTagDefinition(
        tagging_service_pb2.GetTagDefinitionRequest(name="tagDefinitions/repurchase_due"), metadata=ACME
    )
    assert (again.version, again.model) == (updated.version, updated.model)


# --- RFM ---------------------------------------------------------------------------------------


def mean_split(figures: dict[str, tuple[int, int, int]]) -> dict[str, str]:
    r_mean = statistics.fmean(r for r, _, _ in figures.values())
    f_mean = statistics.fmean(f for _, f, _ in figures.values())
    m_mean = statistics.fmean(m for _, _, m in figures.values())
    names = {
        (1, 1, 1): "important_value", (1, 0, 1): "important_development", (0, 1, 1): "important_retention",
        (0, 0, 1): "important_win_back", (1, 1, 0): "general_value", (1, 0, 0): "general_development",
        (0, 1, 0): "general_retention", (0, 0, 0): "general_win_back",
    }  # fmt: skip
    return {
        member_id: names[(int(r < r_mean), int(f > f_mean), int(m > m_mean))]
        for member_id, (r, f, m) in figures.items()
    }


def quintiles(figures: dict[str, tuple[int, int, int]]) -> dict[str, str]:
    n = len(figures)

    def score(at_or_below: int) -> int:
        return -(-5 * at_or_below // n)  # ceil(5 * cume_dist), exactly

    cells = {
        "champions": ({5}, {4, 5}), "loyal": ({3, 4}, {4, 5}), "potential_loyalists": ({4, 5}, {2, 3}),
        "new": ({5}, {1}), "promising": ({4}, {1}), "need_attention": ({3}, {3}),
        "about_to_sleep": ({3}, {1, 2}), "at_risk": ({1, 2}, {3, 4}), "cant_lose": ({1, 2}, {5}),
        "hibernating": ({1, 2}, {1, 2}),
    }  # fmt: skip
    result = {}
    for member_id, (r, f, _) in figures.items():
        # Recency scores highest for the most recent: count members at least as long ago.
        r_score = score(sum(1 for other, _, _ in figures.values() if other >= r))
        f_score = score(sum(1 for _, other, _ in figures.values() if other <= f))
        result[member_id] = next(name for name, (rs, fs) in cells.items() if r_score in rs and f_score in fs)
    return result


async def test_both_rfm_schemes_match_a_hand_computation(tagging_stub: Stub) -> None:
    # (days since each order, amount of each) for a spread of members; 400 days is outside F and M.
    histories = [
        ([3, 40, 90, 200], [30_000, 20_000, 25_000, 40_000]),
        ([5], [150_000]),
        ([10, 20], [5_000, 6_000]),
        ([60, 70, 80, 100, 120, 140], [10_000] * 6),
        ([150, 400], [90_000, 500_000]),
        ([250], [2_000]),
        ([30, 31, 32], [70_000, 1_000, 1_000]),
        ([330], [300_000]),
        ([1, 2, 3, 4, 5, 6, 7], [1_000] * 7),
        ([500], [10_000]),
        ([45, 300], [12_000, 13_000]),
    ]
    expected_figures: dict[str, tuple[int, int, int]] = {}
    for days, amounts in histories:
        member_id = await member(tagging_stub, INITECH)
        for day, amount in zip(days, amounts, strict=True):
            await order(tagging_stub, INITECH, member_id, days_ago(day), amount)
        in_window = [(d, a) for d, a in zip(days, amounts, strict=True) if d < 365]
        expected_figures[member_id] = (min(days), len(in_window), sum(a for _, a in in_window))
    # A fully refunded order does not count; a member without counted orders has no RFM value.
    refunded = await member(tagging_stub, INITECH)
    order_id = await order(tagging_stub, INITECH, refunded, days_ago(2), 80_000)
    await tagging_stub.RecordRefund(
        tagging_service_pb2.RecordRefundRequest(
            refund=facts_pb2.Refund(refund_id=unique("r"), order_id=order_id, refund_time=stamp(days_ago(1)))
        ),
        metadata=INITECH,
    )
    reply = await tagging_stub.RecomputeTags(
        tagging_service_pb2.RecomputeTagsRequest(dimensions=["rfm_segment", "rfm_quintile_segment"]),
        metadata=INITECH,
    )
    assert {r.dimension for r in reply.results} == {"rfm_segment", "rfm_quintile_segment"}

    want_mean, want_quintile = mean_split(expected_figures), quintiles(expected_figures)
    assert len(set(want_mean.values())) >= 4, "the population should spread over several segments"
    for member_id in expected_figures:
        assert await tags(tagging_stub, INITECH, member_id, "rfm_segment") == [want_mean[member_id]]
        assert await tags(tagging_stub, INITECH, member_id, "rfm_quintile_segment") == [
            want_quintile[member_id]
        ]
    assert await tags(tagging_stub, INITECH, refunded, "rfm_segment") == []

    # Explaining one member shows its own figures against the whole population's means.
    some = next(iter(expected_figures))
    explained = await tagging_stub.ExplainTags(
        tagging_service_pb2.ExplainTagsRequest(member=f"members/{some}", dimensions=["rfm_segment"]),
        metadata=INITECH,
    )
    (explanation,) = explained.explanations
    figures = json_format.MessageToDict(explanation.figures)
    r, f, m = expected_figures[some]
    assert (figures["recency_days"], figures["frequency"], figures["monetary_minor"]) == (r, f, m)
    assert figures["frequency_mean"] == pytest.approx(
        statistics.fmean(v[1] for v in expected_figures.values())
    )
    assert list(explanation.values) == [want_mean[some]]


# --- per-member models -------------------------------------------------------------------------


async def test_lifecycle_stages_follow_orders_in_real_time(tagging_stub: Stub) -> None:
    fresh = await member(tagging_stub, ACME, profile=member_pb2.Profile(register_time=stamp(days_ago(3))))
    old_no_orders = await member(
        tagging_stub, ACME, profile=member_pb2.Profile(register_time=stamp(days_ago(400)))
    )
    stages = {}
    for stage, days in (("new", [5]), ("active", [10, 300]), ("silent", [120, 300]), ("churned", [200, 300])):
        member_id = await member(
            tagging_stub, ACME, profile=member_pb2.Profile(register_time=stamp(days_ago(600)))
        )
        for day in days:
            await order(tagging_stub, ACME, member_id, days_ago(day), 10_000)
        stages[stage] = member_id
    # Real-time: no recompute ran for these members.
    for stage, member_id in stages.items():
        assert await tags(tagging_stub, ACME, member_id, "lifecycle") == [stage]
    assert await tags(tagging_stub, ACME, fresh, "lifecycle") == ["new"]
    assert await tags(tagging_stub, ACME, old_no_orders, "lifecycle") == []
    # A second order moves a new member on, at once.
    await order(tagging_stub, ACME, stages["new"], days_ago(1), 10_000)
    assert await tags(tagging_stub, ACME, stages["new"], "lifecycle") == ["active"]


async def test_categories_bought_and_preferred_follow_spend_net_of_refunds(tagging_stub: Stub) -> None:
    member_id = await member(tagging_stub, ACME)
    spend = {"skincare": 9, "makeup": 5, "fragrance": 7, "tools": 1}
    lines = [line(c, quantity=n, unit_price=1_000, line_id=str(i)) for i, (c, n) in enumerate(spend.items())]
    order_id = await order(tagging_stub, ACME, member_id, days_ago(20), 22_000, *lines)
    # Return 6 of the 9 skincare units: it drops below makeup and fragrance.
    await tagging_stub.RecordRefund(
        tagging_service_pb2.RecordRefundRequest(
            refund=facts_pb2.Refund(
                refund_id=unique("r"),
                order_id=order_id,
                refund_time=stamp(days_ago(10)),
                amount_minor=6_000,
                lines=[facts_pb2.RefundLine(line_id="0", quantity=6)],
            )
        ),
        metadata=ACME,
    )
    assert await tags(tagging_stub, ACME, member_id, "categories_bought") == sorted(spend)
    await recompute(tagging_stub, "category_preference")
    assert await tags(tagging_stub, ACME, member_id, "category_preference") == [
        "fragrance",
        "makeup",
        "skincare",
    ]


async def test_interest_is_carted_or_favourited_but_not_bought(tagging_stub: Stub) -> None:
    member_id = await member(tagging_stub, ACME)
    recent = stamp(days_ago(2))
    events = [
        an_event(member_id, kind=facts_pb2.EVENT_KIND_CART, category="skincare", occur_time=recent),
        an_event(member_id, kind=facts_pb2.EVENT_KIND_FAVOURITE, category="makeup", occur_time=recent),
        an_event(member_id, kind=facts_pb2.EVENT_KIND_VIEW, category="fragrance", occur_time=recent),
        an_event(member_id, kind=facts_pb2.EVENT_KIND_CART, category="tools", occur_time=stamp(days_ago(40))),
    ]
    await tagging_stub.RecordEvents(tagging_service_pb2.RecordEventsRequest(events=events), metadata=ACME)
    assert await tags(tagging_stub, ACME, member_id, "interest") == ["makeup", "skincare"]
    await order(tagging_stub, ACME, member_id, days_ago(1), 5_000, line("makeup", unit_price=5_000))
    assert await tags(tagging_stub, ACME, member_id, "interest") == ["skincare"]


async def test_repurchase_is_due_past_the_members_own_cycle(tagging_stub: Stub) -> None:
    due, not_due, once = [await member(tagging_stub, ACME) for _ in range(3)]
    for day in (25, 35, 45, 55):  # every 10 days, last 25 days ago
        await order(tagging_stub, ACME, due, days_ago(day), 10_000)
    for day in (2, 32, 62):  # every 30 days, last 2 days ago
        await order(tagging_stub, ACME, not_due, days_ago(day), 10_000)
    await order(tagging_stub, ACME, once, days_ago(100), 10_000)
    await recompute(tagging_stub, "repurchase_due")
    assert await tags(tagging_stub, ACME, due, "repurchase_due") == ["due"]
    assert await tags(tagging_stub, ACME, not_due, "repurchase_due") == ["not_due"]
    assert await tags(tagging_stub, ACME, once, "repurchase_due") == []


async def test_preferred_send_hour_is_the_busiest_local_hour(tagging_stub: Stub) -> None:
    shanghai = await member(tagging_stub, ACME)  # no zone: the default, Asia/Shanghai (UTC+8)
    new_york = await member(tagging_stub, ACME, contact=member_pb2.Contact(time_zone="America/New_York"))
    for member_id in (shanghai, new_york):
        for day in (3, 4, 5):
            await order(tagging_stub, ACME, member_id, days_ago(day, hour=12), 10_000)  # 12:30 UTC
        clicks = [an_event(member_id, kind=facts_pb2.EVENT_KIND_CLICK, occur_time=stamp(days_ago(6, hour=1)))]
        await tagging_stub.RecordEvents(tagging_service_pb2.RecordEventsRequest(events=clicks), metadata=ACME)
    await recompute(tagging_stub, "preferred_send_hour")
    assert await tags(tagging_stub, ACME, shanghai, "preferred_send_hour") == ["20"]
    # 12:30 UTC is 07:30 or 08:30 in New York, by daylight saving time.
    assert (await tags(tagging_stub, ACME, new_york, "preferred_send_hour"))[0] in {"07", "08"}


# --- tenants' own models and bad parameters ----------------------------------------------------


def a_model(name: str, model: models_pb2.Model, **fields: Any) -> tags_pb2.TagDefinition:
    values: dict[str, Any] = {
        "dimension": name,
        "category": tags_pb2.TAG_CATEGORY_MEMBER,
        "kind": tags_pb2.TAG_KIND_MODEL,
        "refresh_policy": tags_pb2.REFRESH_POLICY_SCHEDULED,
        "cardinality": tags_pb2.CARDINALITY_SINGLE,
        "model": model,
    }
    values.update(fields)
    return tags_pb2.TagDefinition(**values)


LIFECYCLE = models_pb2.Model(lifecycle=models_pb2.Lifecycle(new_days=7, active_days=30, churn_days=60))


async def test_a_tenant_defines_its_own_model_with_the_values_filled_in(tagging_stub: Stub) -> None:
    name = dimension()
    created = await create(tagging_stub, a_model(name, LIFECYCLE))
    assert [v.value for v in created.values] == ["new", "active", "silent", "churned"]
    assert (await create(tagging_stub, a_model(name, LIFECYCLE))).version == 1  # a retry
    # Display names may be given, for exactly the model's values.
    named = a_model(name, LIFECYCLE, values=[tags_pb2.TagValue(value=v.value, display_name=v.value.upper())
                                            for v in created.values])  # fmt: skip
    named.model.lifecycle.churn_days = 90
    updated = await update(tagging_stub, named)
    assert (updated.version, updated.values[0].display_name, updated.model.lifecycle.churn_days) == (
        2,
        "NEW",
        90,
    )
    other = a_model(
        name, models_pb2.Model(repurchase_due=models_pb2.RepurchaseDue(min_orders=2, tolerance_percent=100))
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await update(tagging_stub, other)
    assert "tag_definition.model" in field_violations(caught.value)


def _lifecycle(new: int, active: int, churn: int) -> models_pb2.Model:
    return models_pb2.Model(
        lifecycle=models_pb2.Lifecycle(new_days=new, active_days=active, churn_days=churn)
    )


MULTI = {"cardinality": tags_pb2.CARDINALITY_MULTI}
M = models_pb2
BAD_MODELS = [
    ("no model", a_model("x", M.Model()), "tag_definition.model"),
    ("model on a rule", a_model("x", LIFECYCLE, kind=tags_pb2.TAG_KIND_RULE), "tag_definition.model"),
    ("lifecycle order", a_model("x", _lifecycle(30, 10, 60)), "tag_definition.model.lifecycle"),
    ("window too long", a_model("x", M.Model(rfm_mean_split=M.RfmMeanSplit(window_days=4000))),
     "tag_definition.model.rfm_mean_split.window_days"),
    ("real-time rfm", a_model("x", M.Model(rfm_quintiles=M.RfmQuintiles(window_days=365)),
                              refresh_policy=tags_pb2.REFRESH_POLICY_REAL_TIME),
     "tag_definition.refresh_policy"),
    ("wrong cardinality", a_model("x", LIFECYCLE, **MULTI), "tag_definition.cardinality"),
    ("other values", a_model("x", LIFECYCLE, values=[tags_pb2.TagValue(value="young")]),
     "tag_definition.values"),
    ("values for data", a_model("x", M.Model(categories_bought=M.CategoriesBought()), **MULTI,
                                values=[tags_pb2.TagValue(value="a")]), "tag_definition.values"),
    ("top_n", a_model("x", M.Model(category_preference=M.CategoryPreference(top_n=0)), **MULTI),
     "tag_definition.model.category_preference.top_n"),
    ("no event kinds", a_model("x", M.Model(interest=M.Interest(window_days=14)), **MULTI),
     "tag_definition.model.interest.event_kinds"),
    ("unknown zone", a_model("x", M.Model(preferred_send_hour=M.PreferredSendHour(default_time_zone="X/Y"))),
     "tag_definition.model.preferred_send_hour.default_time_zone"),
    ("tolerance", a_model("x", M.Model(repurchase_due=M.RepurchaseDue(min_orders=2, tolerance_percent=10))),
     "tag_definition.model.repurchase_due.tolerance_percent"),
    ("rule on a model value", a_model("x", LIFECYCLE, values=[
        tags_pb2.TagValue(value=v, rule=rules_pb2.Rule(always=True))
        for v in ("new", "active", "silent", "churned")]),
     "tag_definition.values[0].rule"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "definition", "field"), BAD_MODELS, ids=[c[0] for c in BAD_MODELS])
async def test_bad_models_name_the_field_and_store_nothing(
    tagging_stub: Stub, case: str, definition: tags_pb2.TagDefinition, field: str
) -> None:
    definition.dimension = dimension()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(tagging_stub, definition)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(caught.value)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await tagging_stub.GetTagDefinition(
            tagging_service_pb2.GetTagDefinitionRequest(name=f"tagDefinitions/{definition.dimension}"),
            metadata=ACME,
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
