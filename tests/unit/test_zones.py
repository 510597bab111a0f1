"""runtime.zones.find: the one zone lookup, which no caller-sent name can make raise."""

from __future__ import annotations

import pytest

from runtime import zones
from runtime.errors import InvalidArgument, Violations


@pytest.mark.parametrize(
    "name",
    ["", "Not/AZone", "../../etc/passwd", "x" * 1_000_000, "Asia/" + "a" * 300, "a\x00b", "/", "."],
)
def test_names_that_are_no_zone_find_none(name: str) -> None:
    assert zones.find(name) is None


def test_iana_names_are_found() -> None:
    found = zones.find("America/Argentina/ComodRivadavia")
    assert found is not None and str(found) == "America/Argentina/ComodRivadavia"


def test_a_megabyte_name_is_a_violation_quoting_a_short_prefix() -> None:
    v = Violations()
    zones.zone("Z" * 1_000_000, v, "time_zone")
    with pytest.raises(InvalidArgument) as raised:
        v.raise_if_any()
    (violation,) = raised.value.violations
    assert violation.field == "time_zone" and len(violation.description) < 200
