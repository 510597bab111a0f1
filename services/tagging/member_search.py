"""SearchMembers: an operator's search box over members, by id, phone, WeCom external_userid or
nickname. No gRPC, no SQL.

Exact matches (the member of that id, members of that phone, the member who is that WeCom
contact) come first in id order, then members
whose nickname contains the text (case-insensitive), shortest nickname first, then by id. A page
token holds where the last page ended in that order: (rank, nickname length, member id), bound to
the query it was issued for. An erased member has no nickname, phone or WeCom identity left
(decision 110), so none of them finds it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from runtime import checks, page_tokens
from runtime.db import Database
from runtime.errors import InvalidArgument
from services.tagging import member_search_store, member_store
from services.tagging.domain import Member
from services.tagging.members import MAX_TEXT, PHONE, WECOM_EXTERNAL_USERID

MAX_QUERY = 64
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
# A mainland China mobile number as people type it: 11 digits, starting 13-19.
MAINLAND_MOBILE = re.compile(r"^1[3-9][0-9]{9}\Z")
MAINLAND_PREFIX = "+86"
# What people put between the digits of a phone number.
_PHONE_SEPARATORS = str.maketrans("", "", " -()")
# Ranks in the result's order.
EXACT = 0
NICKNAME = 1


@dataclass(frozen=True)
class SearchTerms:
    """What a query is looked up as."""

    text: str
    member_id: str
    phones: tuple[str, ...]
    # The text when it could be a WeCom external_userid, else ''.
    wecom_external_userid: str
    # A LIKE pattern of the text, matched against the folded nickname after PostgreSQL folds it.
    pattern: str


def search_terms(query: str) -> SearchTerms:
    """The query without surrounding spaces, as an id and a WeCom external_userid (when it could be
    them), as phone numbers (E.164, or a mainland mobile's 11 digits with +86) and as a nickname
    pattern."""
    text = query.strip()
    if not 1 <= len(text) <= MAX_QUERY:
        raise InvalidArgument.field("query", f"must be 1-{MAX_QUERY} characters (besides surrounding spaces)")
    member_id = text if checks.NATURAL_ID.match(text) else ""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    external = text if WECOM_EXTERNAL_USERID.match(text) else ""
    return SearchTerms(text, member_id, phone_numbers(text), external, f"%{escaped}%")


def phone_numbers(text: str) -> tuple[str, ...]:
    """The stored (E.164) phone numbers `text` can mean: itself, or +86 and a mainland mobile."""
    digits = text.translate(_PHONE_SEPARATORS)
    if PHONE.match(digits):
        return (digits,)
    if MAINLAND_MOBILE.match(digits):
        return (MAINLAND_PREFIX + digits,)
    return ()


Position = tuple[int, int, str]


def _after(token: str, terms: SearchTerms) -> Position | None:
    keys = page_tokens.decode(token, _scope(terms), (int, int, str))
    if keys is None:
        return None
    rank, length, member_id = keys
    assert isinstance(rank, int) and isinstance(length, int) and isinstance(member_id, str)
    if rank not in (EXACT, NICKNAME) or not 0 <= length <= MAX_TEXT or not checks.NATURAL_ID.match(member_id):
        raise InvalidArgument.field("page_token", "is not a token this list returned")
    return rank, length, member_id


def _scope(terms: SearchTerms) -> str:
    return f"memberSearch/{terms.text}"


class MemberSearch:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def search(
        self, tenant_id: str, query: str, page_size: int, page_token: str
    ) -> tuple[list[Member], str]:
        """A page of matches and the token of the next page ('' after the last)."""
        terms = search_terms(query)
        size = page_tokens.page_size(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _after(page_token, terms)
        # Planned for each pattern: how far the nickname walk goes depends on the text.
        async with self._db.transaction(tenant_id, readonly=True, plans="custom") as conn:
            exact = await member_search_store.exact_matches(
                conn, terms.member_id, terms.phones, terms.wecom_external_userid
            )
            found: list[Position] = []
            if after is None or after[0] == EXACT:
                since = after[2] if after else ""
                found = [(EXACT, 0, m) for m in sorted(exact) if m > since][: size + 1]
            if len(found) <= size:
                start = (after[1], after[2]) if after and after[0] == NICKNAME else (0, "")
                rows = await member_search_store.nickname_matches(
                    conn, terms.pattern, len(terms.text), start, exact, size + 1 - len(found)
                )
                found += [(NICKNAME, length, member_id) for length, member_id in rows]
            page = found[:size]
            members = {m.member_id: m for m in await member_store.get_members(conn, [p[2] for p in page])}
        token = page_tokens.encode(_scope(terms), *page[-1]) if len(found) > size else ""
        return [members[p[2]] for p in page if p[2] in members], token
