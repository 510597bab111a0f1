"""Step kinds are defined once (workflows/journeys/steps): every kind a definition may name has
one class, which validates it and runs it for a member, and, exactly for the kinds a broadcast
supports, plans it for a batch; and a member's own send hour is read the same way in both shapes."""

from __future__ import annotations

from workflows.journeys import local_time, steps
from workflows.journeys.definition import BROADCAST_STEP_KINDS, STEP_KINDS, Step
from workflows.journeys.steps.base import StepKind


def test_every_kind_has_one_class_and_the_broadcast_ones_a_batch_form() -> None:
    assert tuple(steps.KINDS) == STEP_KINDS
    assert tuple(k for k, kind in steps.KINDS.items() if kind.broadcast) == BROADCAST_STEP_KINDS
    for name, kind in steps.KINDS.items():
        cls = type(kind)
        assert cls.validate is not StepKind.validate and cls.run is not StepKind.run, name
        assert (cls.plan is not StepKind.plan) == kind.broadcast, name
        assert steps.of(Step(id="s", **{name: object()})) is kind  # type: ignore[arg-type]


def test_only_sends_awards_tags_and_coupons_treat_a_member() -> None:
    """Holdout members pass exactly these untreated, in member journeys and in cohorts."""
    treating = {k for k, kind in steps.KINDS.items() if kind.treats}
    assert treating == {"send", "award", "add_tag", "issue_coupon"}


def test_a_preferred_send_hour_is_a_two_digit_hour_else_the_fallback() -> None:
    assert local_time.preferred_hour(["00"]) == 0
    assert local_time.preferred_hour(["20"]) == 20
    for values in ([], ["24"], ["7"], ["x1"], [""]):
        assert local_time.preferred_hour(values) is None, values
    assert local_time.hour_for(9, None) == 9
    assert local_time.hour_for(9, 0) == 0
    assert local_time.hour_for(9, 21) == 21
