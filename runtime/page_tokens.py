"""The one page-token codec: opaque to callers, bound to the list it came from, range-checked.

A token is URL-safe base64 of a JSON array `[scope, key, ...]`: `scope` names the list (and
whatever fixes it, e.g. a member or an audience version) and the keys are where the next page
starts. Decoding refuses anything this codec could not have produced for that list: a foreign or
corrupt token, keys of the wrong type, an integer outside PostgreSQL's bigint, text with a NUL or
longer than any key we store. Every such token is INVALID_ARGUMENT naming the field, never a
database error.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import TypeVar

from runtime.errors import InvalidArgument

Key = int | str
K = TypeVar("K", int, str)

MAX_TOKEN = 2048
MAX_KEY_TEXT = 512
_BIGINT = (-(2**63), 2**63 - 1)


def encode(scope: str, *keys: Key) -> str:
    """A token for the page after `keys` in the list named `scope`."""
    return base64.urlsafe_b64encode(json.dumps([scope, *keys], separators=(",", ":")).encode()).decode()


def decode(
    token: str, scope: str, kinds: tuple[type[Key], ...], field: str = "page_token"
) -> tuple[Key, ...] | None:
    """The keys of `token` (None for the empty token of a first page), each of the type in `kinds`."""
    if not token:
        return None
    body = _body(token, field)
    if (
        not isinstance(body, list)
        or len(body) != len(kinds) + 1
        or body[0] != scope
        or not all(_fits(key, kind) for key, kind in zip(body[1:], kinds, strict=True))
    ):
        raise _invalid(field)
    return tuple(body[1:])


def decode_one(token: str, scope: str, kind: type[K], field: str = "page_token") -> K | None:
    """The one key of a token of a list paged by a single key."""
    keys = decode(token, scope, (kind,), field)
    if keys is None:
        return None
    key = keys[0]
    assert isinstance(key, kind)
    return key


def decode_matching(token: str, scope: str, pattern: re.Pattern[str], field: str = "page_token") -> str:
    """The one text key of a token ('' for a first page), refused unless `pattern` matches it: the
    lists keyed by an id accept only a key that could be one of their ids."""
    key = decode_one(token, scope, str, field)
    if key is None:
        return ""
    if not pattern.match(key):
        raise _invalid(field)
    return key


def page_size(value: int, default: int, maximum: int, field: str = "page_size") -> int:
    """The size of a page asked for: 0 means `default`, else 1 to `maximum`."""
    if not 0 <= value <= maximum:
        raise InvalidArgument.field(field, f"must be between 1 and {maximum} (0 means {default})")
    return value or default


def _body(token: str, field: str) -> object:
    if len(token) > MAX_TOKEN:
        raise _invalid(field)
    try:
        return json.loads(base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8"))
    except (ValueError, UnicodeError, binascii.Error):
        raise _invalid(field) from None


def _fits(key: object, kind: type[Key]) -> bool:
    # bool is an int to Python and json: refuse it, no codec of ours wrote one.
    if type(key) is not kind:
        return False
    if isinstance(key, int):
        return _BIGINT[0] <= key <= _BIGINT[1]
    assert isinstance(key, str)
    return len(key) <= MAX_KEY_TEXT and "\x00" not in key


def _invalid(field: str) -> InvalidArgument:
    return InvalidArgument.field(field, "is not a token this list returned")
