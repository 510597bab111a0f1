"""Member sets as compressed bitmaps, held in memory per tenant, so an audience over tags and profile
fields is AND/OR/ANDNOT over a few bitmaps instead of a statement over every member (issue 25).

Tagging numbers its members densely (`member_no`, tagging migration 0024); per tenant the index holds
one pyroaring `BitMap` of numbers per current tag value (dimension, value), one per value of each
bucketed profile field (`BUCKETED_FIELDS`, compared by equality in rules), the universe of every
member, and a compact number -> member id store to turn a result back into ids.

A tenant is loaded in one REPEATABLE READ snapshot together with the position of tagging's feed in
that snapshot (the same position the load's data reflects), then kept in step with the feed
(`tagging_read.feed`): every REFRESH_SECONDS the entries after the position are read in pages
(bounded work per refresh, as membership_index.py). An entry is not applied blindly: a page's
MEMBER_CHANGED entries re-read those members' rows and its TAG_CHANGED entries re-read those
(member, dimension) pairs' current values, so applying an entry twice, or entries of transactions
positioned out of their commit order, still leaves what the database holds. An erasure needs no
case of its own: the pseudonym's row keeps the member's number (tagging's erasure_store), so its
MEMBER_CHANGED entry renames the number and moves its buckets, and the tags it ended arrive as tag
changes.

Answers come from `current` (None while a tenant is not loaded, or when it was not refreshed for
MAX_AGE_SECONDS: the caller then evaluates in SQL as before) or `caught_up` (refreshed to the feed's
end as of the call first, so a caller's own writes are reflected, as a statement would see them).
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import asyncpg
from memberops.tagging.v1 import member_pb2, rules_pb2
from pyroaring import BitMap

from runtime import outbox, rounds
from runtime.db import Connection, Database
from runtime.logs import get_logger
from services.audience import bitmap_store

log = get_logger("memberops.audience.bitmaps")

REFRESH_SECONDS = 0.1
MAX_AGE_SECONDS = 5.0
FEED_PAGE = 10_000
# Feed pages applied per background refresh, so one tenant's burst does not hold up the others.
PAGES_PER_REFRESH = 20
# Pages `caught_up` applies for its caller before it gives up (the caller evaluates in SQL).
PAGES_PER_CALL = 3
# Members read per statement while loading.
LOAD_CHUNK = 500_000

BUCKETED_FIELDS: frozenset[str] = frozenset(bitmap_store.BUCKET_COLUMNS)
# The rule language's profile fields (rules_pb2.ProfileField) that are bucketed -> their name here.
RULE_FIELDS: Mapping[int, str] = {
    rules_pb2.PROFILE_FIELD_GENDER: "gender",
    rules_pb2.PROFILE_FIELD_CITY_TIER: "city_tier",
    rules_pb2.PROFILE_FIELD_LEVEL: "level",
    rules_pb2.PROFILE_FIELD_REGISTER_CHANNEL: "register_channel",
    rules_pb2.PROFILE_FIELD_CITY: "city",
}
# Enum-valued fields are compared by the enum value's name in rules, stored as its number.
_ENUMS: Mapping[str, Mapping[str, int]] = {
    "gender": {name: int(number) for name, number in member_pb2.Gender.items()},
    "city_tier": {name: int(number) for name, number in member_pb2.CityTier.items()},
}


class MemberIds:
    """Member number -> member id, compact: the numbers loaded, ascending, in an array('I') (and a
    BitMap of them, whose rank is the index), their ids concatenated in one bytearray with
    offsets; numbers added or renamed since (new members, erasures) in a small dict, folded in
    when it grows. About 14 bytes and the id's length per member (a dict would take ~130).

    The reverse (id -> number, `numbers_of`) is a dict, built on first use and kept from then on:
    only a tenant whose evaluations need it pays its memory."""

    def __init__(self) -> None:
        self._numbers = array("I")
        self._offsets = array("Q", [0])
        self._blob = bytearray()
        self._base = BitMap()
        self._tail: dict[int, str] = {}
        self._by_id: dict[str, int] | None = None

    def extend(self, numbers: Sequence[int], lengths: Sequence[int], ids: bytes) -> None:
        """Appends members numbered above every number held (a load's chunks, in number order)."""
        assert not self._numbers or numbers[0] > self._numbers[-1], "chunks come in number order"
        ends = itertools.accumulate(lengths, initial=self._offsets[-1])
        self._numbers.extend(numbers)
        self._offsets.extend(itertools.islice(ends, 1, None))
        self._blob.extend(ids)
        self._base.update(numbers)
        if self._by_id is not None:
            for i in range(len(self._numbers) - len(numbers), len(self._numbers)):
                self._by_id[self._stored(i)] = self._numbers[i]

    def get(self, number: int) -> str | None:
        found = self._tail.get(number)
        if found is not None:
            return found
        i = self._base.rank(number) - 1
        if i < 0 or self._numbers[i] != number:
            return None
        return self._stored(i)

    def ids(self, numbers: Iterable[int]) -> list[str]:
        """The ids of `numbers`, in their order; numbers of no member are left out."""
        tail, rank, held, offsets, blob = (
            self._tail,
            self._base.rank,
            self._numbers,
            self._offsets,
            self._blob,
        )
        found: list[str] = []
        for number in numbers:
            if tail:
                renamed = tail.get(number)
                if renamed is not None:
                    found.append(renamed)
                    continue
            i = rank(number) - 1
            if i >= 0 and held[i] == number:
                found.append(blob[offsets[i] : offsets[i + 1]].decode())
        return found

    def put(self, number: int, member_id: str) -> None:
        """Numbers a new member, or gives a member's number a new id (an erasure's pseudonym)."""
        if self._by_id is not None:
            previous = self.get(number)
            if previous is not None and previous != member_id:
                self._by_id.pop(previous, None)
            self._by_id[member_id] = number
        self._tail[number] = member_id
        if len(self._tail) > 65_536 + len(self._numbers) // 8:
            self._fold()

    def numbers_of(self, member_ids: Iterable[str]) -> BitMap:
        """The numbers of these ids; ids of no member are left out."""
        if self._by_id is None:
            by_id = {self._stored(i): n for i, n in enumerate(self._numbers)}
            by_id.update((member_id, n) for n, member_id in self._tail.items())
            self._by_id = by_id
        by_id = self._by_id
        return BitMap(n for n in map(by_id.get, member_ids) if n is not None)

    def memory_bytes(self) -> int:
        held = (
            self._numbers.buffer_info()[1] * self._numbers.itemsize
            + self._offsets.buffer_info()[1] * self._offsets.itemsize
            + len(self._blob)
            + _bitmap_bytes(self._base)
            + sys.getsizeof(self._tail)
            + sum(sys.getsizeof(member_id) + 28 for member_id in self._tail.values())
        )
        if self._by_id is not None:
            # The dict and its keys (the ints are shared with nothing: count them too).
            held += sys.getsizeof(self._by_id) + sum(sys.getsizeof(k) + 28 for k in self._by_id)
        return held

    def _stored(self, i: int) -> str:
        return self._blob[self._offsets[i] : self._offsets[i + 1]].decode()

    def _fold(self) -> None:
        """Moves the tail's numbers above every loaded one into the arrays (new members, in the
        usual case); renames and numbers committed out of order stay in the tail."""
        top = self._numbers[-1] if self._numbers else 0
        above = sorted(n for n in self._tail if n > top)
        if not above:
            return
        encoded = [self._tail.pop(n).encode() for n in above]
        by_id, self._by_id = self._by_id, None  # extend() would re-add them; they are there
        self.extend(above, [len(e) for e in encoded], b"".join(encoded))
        self._by_id = by_id


class TenantBitmaps:
    """One tenant's bitmaps, reflecting every feed entry up to `position` (and maybe some after).

    Read-only to callers: every method returns a new bitmap. The index changes these objects in
    place between awaits, so a caller combines what it needs without awaiting in between."""

    bucketed_fields: frozenset[str] = BUCKETED_FIELDS

    def __init__(self, position: outbox.Position | None) -> None:
        self.position = position
        self.universe = BitMap()
        self._tags: dict[str, dict[str, BitMap]] = {}
        self._buckets: dict[str, dict[str, BitMap]] = {field: {} for field in BUCKETED_FIELDS}
        self._ids = MemberIds()

    def tag(self, dimension: str, values: Sequence[str] | None) -> BitMap:
        """Members holding any of `values` of the dimension now; None: any value of it."""
        held = self._tags.get(dimension, {})
        chosen = list(held.values()) if values is None else [held[v] for v in values if v in held]
        return BitMap.union(*chosen) if chosen else BitMap()

    def profile(self, field: str, values: Sequence[str]) -> BitMap | None:
        """Members whose profile `field` equals one of `values`, given as rules give them (enum
        names for gender and city tier, text otherwise); None when `field` is not bucketed. The
        bucketed columns are NOT NULL, so "not equal" is `universe - profile(...)`."""
        buckets = self._buckets.get(field)
        if buckets is None:
            return None
        enum = _ENUMS.get(field)
        keys = [str(enum[v]) for v in values if v in enum] if enum is not None else list(values)
        chosen = [buckets[k] for k in keys if k in buckets]
        return BitMap.union(*chosen) if chosen else BitMap()

    def profile_values(self, field: str) -> frozenset[str]:
        """The values of a bucketed field members have now, as rules give them."""
        names = {str(n): name for name, n in _ENUMS.get(field, {}).items()}
        return frozenset(names.get(v, v) for v in self._buckets.get(field, {}))

    def member_ids(self, numbers: BitMap) -> list[str]:
        """The member ids of these numbers, in number order."""
        return self._ids.ids(numbers)

    def numbers_of(self, member_ids: Iterable[str]) -> BitMap:
        """The numbers of these member ids (ids of no member left out), from memory: the first call
        for a tenant builds the reverse map (about 0.1 KB a member)."""
        return self._ids.numbers_of(member_ids)

    def dimensions(self) -> dict[str, frozenset[str]]:
        """Each dimension held -> the values members hold now."""
        return {d: frozenset(values) for d, values in self._tags.items()}

    def memory_bytes(self) -> int:
        bitmaps = [self.universe]
        for held in itertools.chain(self._tags.values(), self._buckets.values()):
            bitmaps.extend(held.values())
        return sum(_bitmap_bytes(b) for b in bitmaps) + self._ids.memory_bytes()

    # Applying what the database holds (the index's, never a caller's) --------------------------

    def load_members(self, numbers: Sequence[int], lengths: Sequence[int], ids: bytes) -> None:
        self._ids.extend(numbers, lengths, ids)
        self.universe.update(numbers)

    def load_bucket(self, field: str, value: str, numbers: Sequence[int]) -> None:
        self._buckets[field][value] = BitMap(numbers)

    def load_tag(self, dimension: str, value: str, numbers: Sequence[int]) -> None:
        self._tags.setdefault(dimension, {})[value] = BitMap(numbers)

    def optimize(self) -> None:
        """Run-length encodes the containers where that is smaller (dense, contiguous numbers)."""
        self.universe.run_optimize()
        for held in itertools.chain(self._tags.values(), self._buckets.values()):
            for bitmap in held.values():
                bitmap.run_optimize()

    def set_member(self, row: Mapping[str, Any] | asyncpg.Record) -> None:
        """A member's row as it is now (`member_no`, `member_id`, each bucketed field as text)."""
        number, member_id = int(row["member_no"]), str(row["member_id"])
        new = number not in self.universe
        self.universe.add(number)
        if self._ids.get(number) != member_id:
            self._ids.put(number, member_id)
        for field, buckets in self._buckets.items():
            value = str(row[field])
            bucket = buckets.get(value)
            if bucket is not None and number in bucket:
                continue
            if not new:
                _discard_everywhere(buckets, number)
            buckets.setdefault(value, BitMap()).add(number)

    def set_tags(self, number: int, dimension: str, named: Iterable[str], held: Iterable[str]) -> None:
        """Makes the member hold, of the `named` values of the dimension, those it `held` now."""
        now_held = set(held)
        values = self._tags.setdefault(dimension, {})
        for value in named:
            if value in now_held:
                values.setdefault(value, BitMap()).add(number)
            else:
                bitmap = values.get(value)
                if bitmap is not None:
                    bitmap.discard(number)
                    if not bitmap:
                        del values[value]
        for value in now_held:  # a value no entry of the page named (its entry is to come)
            values.setdefault(value, BitMap()).add(number)
        if not values:
            del self._tags[dimension]


def _discard_everywhere(buckets: dict[str, BitMap], number: int) -> None:
    for value in [v for v, bitmap in buckets.items() if number in bitmap]:
        buckets[value].discard(number)
        if not buckets[value]:
            del buckets[value]


def _bitmap_bytes(bitmap: BitMap) -> int:
    """The bitmap's containers' bytes plus their headers (pyroaring keeps ~16 bytes a container)."""
    stats = bitmap.get_statistics()
    return (
        int(stats["n_bytes_array_containers"])
        + int(stats["n_bytes_run_containers"])
        + int(stats["n_bytes_bitset_containers"])
        + 16 * int(stats["n_containers"])
        + 64
    )


class BitmapIndex:
    def __init__(
        self, db: Database, tenants: frozenset[str], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._db = db
        self._tenants = tenants
        self._clock = clock
        self._loaded: dict[str, TenantBitmaps] = {}
        self._refreshed: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def current(self, tenant_id: str) -> TenantBitmaps | None:
        """The tenant's bitmaps as last refreshed; None when not loaded, or not refreshed for
        MAX_AGE_SECONDS (the database may be unreachable): evaluate in SQL then."""
        held = self._loaded.get(tenant_id)
        if held is None or self._clock() - self._refreshed[tenant_id] > MAX_AGE_SECONDS:
            return None
        return held

    async def caught_up(self, tenant_id: str) -> TenantBitmaps | None:
        """The tenant's bitmaps refreshed at least to the feed's end as of this call (a caller's
        own committed writes are reflected once the sequencer has positioned them); None as for
        `current`, or when more than PAGES_PER_CALL pages are missing (a burst being applied)."""
        if tenant_id not in self._loaded:
            return None
        began = self._clock()
        async with self._lock(tenant_id):
            held = self._loaded[tenant_id]
            async with self._db.transaction(tenant_id, readonly=True, snapshot=True) as conn:
                done = await _follow(conn, held, await bitmap_store.feed_end(conn), PAGES_PER_CALL)
            self._refreshed[tenant_id] = began
        return held if done else None

    async def numbers(self, conn: Connection, member_ids: Sequence[str]) -> dict[str, int]:
        """member id -> member number, for the members known (one statement on `conn`)."""
        return await bitmap_store.numbers(conn, member_ids)

    def memory_bytes(self) -> int:
        """What the index holds over all tenants, in bytes (bitmaps and id stores)."""
        return sum(held.memory_bytes() for held in list(self._loaded.values()))

    async def run(self) -> None:
        """Loads every tenant, then follows their feeds, until cancelled (a failed refresh is
        logged and tried again; while a burst of entries waits, refreshes follow at once)."""
        await rounds.every_tenant(
            self._tenants, self.refresh, REFRESH_SECONDS, log, "bitmap index refresh failed"
        )

    async def refresh(self, tenant_id: str) -> bool:
        """Loads the tenant if it is not loaded, else applies up to PAGES_PER_REFRESH feed pages;
        True when more entries wait."""
        began = self._clock()
        async with self._lock(tenant_id):
            async with self._db.transaction(tenant_id, readonly=True, snapshot=True) as conn:
                held = self._loaded.get(tenant_id)
                if held is None:
                    started = time.monotonic()
                    held = await load(conn)
                    done = True
                    log.info(
                        "bitmap index loaded",
                        tenant=tenant_id,
                        members=len(held.universe),
                        bytes=held.memory_bytes(),
                        seconds=round(time.monotonic() - started, 3),
                    )
                else:
                    done = await _follow(conn, held, await bitmap_store.feed_end(conn), PAGES_PER_REFRESH)
            self._loaded[tenant_id] = held
            self._refreshed[tenant_id] = began
        return not done

    def _lock(self, tenant_id: str) -> asyncio.Lock:
        return self._locks.setdefault(tenant_id, asyncio.Lock())


async def load(conn: Connection) -> TenantBitmaps:
    """The tenant's bitmaps as `conn`'s snapshot (REPEATABLE READ) sees them, at its feed's end."""
    held = TenantBitmaps(await bitmap_store.feed_end(conn))
    after = 0
    while (chunk := await bitmap_store.member_chunk(conn, after, LOAD_CHUNK)) is not None:
        held.load_members(chunk.numbers, chunk.lengths, chunk.ids)
        after = chunk.numbers[-1]
    async for field, value, numbers in bitmap_store.profile_buckets(conn):
        held.load_bucket(field, value, numbers)
    async for dimension, value, numbers in bitmap_store.current_tags(conn):
        held.load_tag(dimension, value, numbers)
    held.optimize()
    return held


async def _follow(conn: Connection, held: TenantBitmaps, end: outbox.Position | None, pages: int) -> bool:
    """Applies the feed's member and tag changes after `held.position` up to `end`, at most `pages`
    pages; True when it reached `end`."""
    if end is None or (held.position is not None and end <= held.position):
        return True
    for _ in range(pages):
        rows = await bitmap_store.read_changes(conn, held.position, FEED_PAGE, end)
        await _apply(conn, held, rows)
        if len(rows) < FEED_PAGE:
            held.position = end
            return True
        held.position = (rows[-1]["position"], rows[-1]["seq"])
    return False


async def _apply(conn: Connection, held: TenantBitmaps, rows: Sequence[asyncpg.Record]) -> None:
    """One page of feed entries, by re-reading what they name (see the module docstring)."""
    changed = {row["member_id"] for row in rows if row["kind"] == bitmap_store.MEMBER_CHANGED}
    named: dict[tuple[str, str], set[str]] = {}
    for row in rows:
        if row["kind"] == bitmap_store.TAG_CHANGED and row["tag_dimension"] is not None:
            named.setdefault((row["member_id"], row["tag_dimension"]), set()).add(row["tag_value"])
    if named:
        pairs = sorted(named)
        found = await bitmap_store.tags_of(conn, [m for m, _ in pairs], [d for _, d in pairs])
        # A member whose tags are positioned before its creation (a transaction that began first
        # and committed later): its row is read too, so the universe holds every tagged member.
        changed.update(row["member_id"] for row in found if row["member_no"] not in held.universe)
    if changed:
        for row in await bitmap_store.member_rows(conn, sorted(changed)):
            held.set_member(row)
    if named:
        for row in found:
            held.set_tags(
                row["member_no"],
                row["dimension"],
                named[row["member_id"], row["dimension"]],
                row["tag_values"],
            )
