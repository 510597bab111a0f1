"""The fuzzer's wait for background work knows when the audience maintainer still owes a round."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from services.audience import dynamic
from tests.fuzz import quiet

NOW = dt.datetime(2026, 12, 6, 12, tzinfo=dt.UTC)


def audience(**changes: Any) -> dict[str, Any]:
    """A dynamic audience evaluated whole just now at its current version: nothing owed."""
    return {
        "dynamic": True,
        "deleted": False,
        "current_version": 2,
        "membership_version": 2,
        "membership_time": NOW,
        "references_changed": False,
    } | changes


@pytest.mark.parametrize(
    ("changes", "owed"),
    [
        ({}, False),
        ({"membership_time": None, "membership_version": None}, True),  # created
        ({"membership_version": 1}, True),  # changed
        ({"references_changed": True}, True),
        ({"deleted": True}, True),  # its membership is left to clear
        ({"dynamic": False}, True),
        ({"membership_time": NOW - dynamic.FULL_EVERY + quiet.HORIZON * 2}, False),
        ({"membership_time": NOW - dynamic.FULL_EVERY + quiet.HORIZON / 2}, True),  # falls due soon
        ({"membership_time": NOW - dynamic.FULL_EVERY}, True),
    ],
)
def test_an_audience_is_owed_when_the_maintainer_would_evaluate_it(
    changes: dict[str, Any], owed: bool
) -> None:
    assert quiet.due(audience(**changes), NOW) is owed
