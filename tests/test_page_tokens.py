"""The one page-token codec and the feed cursor: what they accept is what they could have written."""

from __future__ import annotations

import base64
import json
import re

import pytest

from runtime import outbox, page_tokens
from runtime.errors import InvalidArgument


def _raw(body: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode()


def test_a_token_round_trips_and_the_empty_token_is_the_first_page() -> None:
    assert page_tokens.decode(page_tokens.encode("s", 7, "m-1"), "s", (int, str)) == (7, "m-1")
    assert page_tokens.decode_one("", "s", int) is None


@pytest.mark.parametrize(
    "token",
    [
        "garbage!",
        "%%%",
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        _raw(["other", 1]),
        _raw(["s", 2**63]),
        _raw(["s", -(2**63) - 1]),
        _raw(["s", True]),
        _raw(["s", "1"]),
        _raw(["s", 1, 2]),
        _raw({"s": "s", "a": 1}),
        "A" * (page_tokens.MAX_TOKEN + 4),
    ],
)
def test_anything_else_is_invalid_argument_naming_the_field(token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        page_tokens.decode_one(token, "s", int, field="next")
    assert [v.field for v in caught.value.violations] == ["next"]


@pytest.mark.parametrize("key", ["a\x00b", "x" * (page_tokens.MAX_KEY_TEXT + 1)])
def test_text_keys_with_a_nul_or_past_any_stored_key_are_refused(key: str) -> None:
    with pytest.raises(InvalidArgument):
        page_tokens.decode_one(_raw(["s", key]), "s", str)


@pytest.mark.parametrize(
    "cursor", ["99999999999999999999-1", "18446744073709551616-1", "1-9999999999999999999", "1-", "x"]
)
def test_feed_cursors_out_of_xid8_or_bigint_range_are_refused(cursor: str) -> None:
    with pytest.raises(InvalidArgument):
        outbox.parse_cursor(cursor)


def test_the_largest_cursor_that_fits_is_read() -> None:
    assert outbox.parse_cursor(f"{2**64 - 1}-{2**63 - 1}") == (2**64 - 1, 2**63 - 1)


def test_an_id_keyed_list_takes_only_a_key_its_id_pattern_matches() -> None:
    ids = re.compile(r"^[a-z]+\Z")
    assert page_tokens.decode_matching("", "s", ids) == ""
    assert page_tokens.decode_matching(page_tokens.encode("s", "abc"), "s", ids) == "abc"
    with pytest.raises(InvalidArgument) as caught:
        page_tokens.decode_matching(page_tokens.encode("s", "ABC"), "s", ids)
    assert [(v.field, v.description) for v in caught.value.violations] == [
        ("page_token", "is not a token this list returned")
    ]


@pytest.mark.parametrize(("asked", "size"), [(0, 100), (1, 1), (1000, 1000)])
def test_a_page_size_of_zero_is_the_default_and_the_rest_is_taken_as_asked(asked: int, size: int) -> None:
    assert page_tokens.page_size(asked, 100, 1000) == size


@pytest.mark.parametrize("asked", [-1, 1001])
def test_a_page_size_out_of_range_is_invalid_argument_saying_the_range(asked: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        page_tokens.page_size(asked, 100, 1000)
    assert [(v.field, v.description) for v in caught.value.violations] == [
        ("page_size", "must be between 1 and 1000 (0 means 100)")
    ]
