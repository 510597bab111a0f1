"""One member's tags into WeCom, state-based: whatever changes led here and in whatever order they
came, the member's customer in WeCom (the follow_user entry of the staff member who owns them) ends
holding, in each pushed dimension's group, exactly the tags of the values the member holds in
MemberOps now. `mark` is one `mark_tag` call (WeCom: 编辑客户企业标签, add_tag and remove_tag
together, "add_tag和remove_tag不可同时为空") for the dimensions whose tags MemberOps changed: add =
the held values' tags, remove = those groups' other tags, so repeating it changes nothing, and a
group MemberOps did not change (where staff may have set a tag the pull has not brought back yet)
is left alone. `repair` (the full reconciliation, and a member changed otherwise) reads the
customer first (`externalcontact/get`) and marks only when WeCom holds something else (drift).

A tag id WeCom refuses (40068: staff deleted the tag) makes the library forget what is gone and
make it again, then the call is made once more. Errors that concern this member alone (the customer
or the staff member unknown to WeCom, the relationship ended) leave the member out (`None`); any
other error is the round's to retry."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from workflows.wecom.api import WeComError
from workflows.wecom.library import INVALID_TAG_ID, TagLibrary
from workflows.wecom.tagging_reads import Identity

# WeCom's errcodes about one member: 40003 无效的UserID, 40096 不合法的外部联系人userid, 84061 不存在
# 外部联系人的关系.
MEMBER_ERRORS = frozenset({40003, 40096, 84061})

Held = Mapping[str, set[str]]


class Push:
    def __init__(
        self,
        library: TagLibrary,
        mark_tag: Callable[..., Awaitable[None]],
        get_contact: Callable[[str], Awaitable[dict[str, Any]]],
        pulled: Collection[str] = (),
    ) -> None:
        self._library = library
        self._mark_tag = mark_tag
        self._get_contact = get_contact
        self._pulled = frozenset(pulled)

    async def mark(self, member: Identity, held: Held, dimensions: Collection[str]) -> bool | None:
        """Makes WeCom hold `held` in the groups of `dimensions` (those MemberOps changed for the
        member): True when a mark_tag was made, False when there was nothing to set or clear (no
        tag of them exists and none is held), None when the member cannot be reached in WeCom."""

        async def step() -> bool:
            wanted, others = await self._wanted(held, dimensions)
            return await self._set(member, wanted, others)

        return await self._attempts(step)

    async def repair(self, member: Identity, held: Held) -> bool | None:
        """Reads what WeCom holds and marks only the difference: True when something was repaired,
        False when WeCom held `held`, None when the member cannot be reached in WeCom. A group of a
        pushed dimension is made exactly `held`; a group staff also set (a pulled dimension) only
        gets what it lacks: a tag there MemberOps does not hold may be a staff change the pull has
        not brought back yet (its callback waits for the next round), and is never undone."""

        async def step() -> bool | None:
            wanted, _ = await self._wanted(held, self._library.dimensions)
            contact = await self._get_contact(member.external_userid)
            follows = contact.get("follow_user", [])
            follow = next((f for f in follows if f.get("userid") == member.staff_userid), None)
            if follow is None:
                return None
            has = {str(t.get("tag_id", "")) for t in follow.get("tags", [])} & self._library.tag_ids()
            kept = self._library.tag_ids(self._pulled)
            return await self._set(member, wanted - has, has - wanted - kept)

        return await self._attempts(step)

    async def _set(self, member: Identity, add: set[str], remove: set[str]) -> bool:
        """One mark_tag (none when there is nothing to add or remove)."""
        if not add and not remove:
            return False
        await self._mark_tag(
            userid=member.staff_userid,
            external_userid=member.external_userid,
            add_tag=sorted(add),
            remove_tag=sorted(remove),
        )
        return True

    async def _attempts(self, step: Callable[[], Awaitable[bool | None]]) -> bool | None:
        """`step`, made again once after a stale tag id; None when the member cannot be reached."""
        for attempt in (1, 2):
            try:
                return await step()
            except WeComError as error:
                if not await self._handled(error, attempt):
                    raise
                if error.errcode in MEMBER_ERRORS:
                    return None
        raise AssertionError("unreachable")

    async def _wanted(self, held: Held, dimensions: Collection[str]) -> tuple[set[str], set[str]]:
        """The tag ids to hold in the groups of `dimensions`, and those groups' other tag ids."""
        chosen = {d: held.get(d, set()) for d in dimensions}
        await self._library.ensure(chosen)
        wanted = set()
        for dimension, values in chosen.items():
            for value in values:
                tag_id = self._library.tag_id(dimension, value)
                if tag_id:
                    wanted.add(tag_id)
        return wanted, self._library.tag_ids(dimensions) - wanted

    async def _handled(self, error: WeComError, attempt: int) -> bool:
        """Whether `error` is the member's alone (leave them out) or a stale tag id on the first
        attempt (the library is checked against WeCom, and the call made again)."""
        if error.errcode in MEMBER_ERRORS:
            return True
        if error.errcode == INVALID_TAG_ID and attempt == 1:
            await self._library.verify()
            return True
        return False
