"""The shared field checks: an id is the whole string, not a prefix that a newline can follow."""

from __future__ import annotations

import pytest

from runtime import checks
from runtime.errors import Violations


@pytest.mark.parametrize("value", ["m-1\n", "m-1\r\n", "\nm-1", "m 1", "", "x" * 65])
def test_a_natural_id_is_refused_unless_the_whole_value_fits(value: str) -> None:
    v = Violations()
    checks.natural_id(value, v, "member_id")
    assert v


def test_the_longest_natural_id_fits() -> None:
    v = Violations()
    checks.natural_id("a:b@c.d_e-" + "x" * 54, v, "member_id")
    assert not v
