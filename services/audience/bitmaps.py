"""Member sets as compressed bitmaps, held in memory per tenant, so an audience over tags and profile
fields is AND/OR/ANDNOT over a few bitmaps instead of a statement over every member (issue 25).

Tagging numbers its members densely (`member_no`, tagging migration 0024); per tenant the index holds
one pyroaring `BitMap` of numbers per current tag value (dimension, value), one per value of each
bucketed profile field (`BUCKETED_FIELDS`, compared by equality in rules), tagging's recency
summaries by day (`fact_windows.py`), the universe of every member, and a number -> member id store
to turn a result back into ids.

A tenant is loaded in one REPEATABLE READ snapshot together with the position of tagging's feed in
that snapshot (the same position the load's data reflects), then kept in step with the feed
(`tagging_read.feed`): every REFRESH_SECONDS the entries after the position are read in pages
(bounded work per refresh, as membership_index.py). An entry is not applied blindly: a page's
MEMBER_CHANGED entries re-read those members' rows, its TAG_CHANGED entries those (member,
dimension) pairs' current values, and its order, refund and event entries those members' recency
rows, so applying an entry twice, or entries of transactions positioned out of their commit order,
still leaves what the database holds. An erasure needs no
case of its own: the pseudonym's row keeps the member's number (tagging's erasure_store), so its
MEMBER_CHANGED entry renames the number and moves its buckets, the tags it ended arrive as tag
changes, and its facts (moved to the pseudonym unchanged) keep their days.

Answers come from `current` (None while a tenant is not loaded, or when it was not refreshed for
MAX_AGE_SECONDS: the caller then evaluates in SQL as before) or `caught_up` (first brought to the
feed's end as of the call, and given the changes of transactions committed but not positioned yet,
so a caller's own writes are reflected, as a statement would see them).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import asyncpg
from memberops.tagging.v1 import member_pb2, rules_pb2
from pyroaring import BitMap

from runtime import metrics, outbox, rounds
from runtime.batching import KeyedBatcher
from runtime.db import Connection, Database
from runtime.logs import get_logger
from services.audience import bitmap_store, fact_windows

log = get_logger("memberops.audience.bitmaps")

REFRESH_SECONDS = 0.1
MAX_AGE_SECONDS = 5.0
FEED_PAGE = 10_000
# Feed pages applied per background refresh, so one tenant's burst does not hold up the others.
PAGES_PER_REFRESH = 20
# Entries `caught_up` applies for its caller; with more missing it gives up at once (the caller
# evaluates in SQL) and leaves them to the background refresh.
CALL_ENTRIES = 1000
# Member numbers (a range: a tenant's members may hold fewer) read per statement while loading.
LOAD_CHUNK = 1_000_000

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
    """Member number -> member id: the numbers in order in an array('I'), their ids in a list at
    the same index, and a BitMap of the numbers whose rank is that index. A new member's number
    is above every other in the usual case and is appended; one committed out of number order waits
    in a small dict until the next fold. About 75 bytes a member with a 10-character id (a dict
    would take twice as much); ids need no decoding per call (ids decoded from one compact buffer
    ran at ~1.2M a second). There is no reverse map: what SQL decides comes back as numbers."""

    def __init__(self) -> None:
        self._numbers = array("I")
        self._ids: list[str] = []
        self._base = BitMap()
        self._late: dict[int, str] = {}
        # Characters of the ids held, so memory_bytes need not walk them.
        self._chars = 0

    def extend(self, numbers: Sequence[int], ids: Sequence[str]) -> None:
        """Appends members numbered above every number held (a load's chunks, in number order)."""
        assert not self._numbers or numbers[0] > self._numbers[-1], "chunks come in number order"
        self._numbers.extend(numbers)
        self._ids.extend(ids)
        self._chars += sum(map(len, ids))
        self._base.update(numbers)

    def get(self, number: int) -> str | None:
        found = self._ids[self._base.rank(number) - 1] if number in self._base else None
        return self._late.get(number) if found is None else found

    def ids(self, numbers: Iterable[int]) -> list[str]:
        """The ids of `numbers`, in their order; numbers of no member are left out."""
        late, base, ids, rank = self._late, self._base, self._ids, self._base.rank
        if late:
            return [found for found in map(self.get, numbers) if found is not None]
        if isinstance(numbers, BitMap) and len(numbers) > len(ids) // 16:
            # A large selection: one pass over every member in C (~0.15 s at 1M, whatever the
            # selection), not a rank per number (~1.8 us each).
            return list(itertools.compress(ids, map(numbers.__contains__, self._numbers)))
        if not (isinstance(numbers, BitMap) and numbers.issubset(base)):
            numbers = [n for n in numbers if n in base]
        return [ids[rank(n) - 1] for n in numbers]

    def put(self, number: int, member_id: str) -> None:
        """Numbers a new member, or gives a member's number a new id (an erasure's pseudonym)."""
        previous = self.get(number)
        self._chars += len(member_id) - len(previous or "")
        if number in self._base:
            self._ids[self._base.rank(number) - 1] = member_id
        elif not self._numbers or number > self._numbers[-1]:
            self._numbers.append(number)
            self._ids.append(member_id)
            self._base.add(number)
        else:
            self._late[number] = member_id
            if len(self._late) > 4096 + len(self._numbers) // 64:
                self._fold()

    def memory_bytes(self) -> int:
        """The arrays, the list and its strings, the dicts, by CPython's sizes (an ASCII str is 49
        bytes and its characters, a dict ~ 40 bytes an entry, an int above 256 28), without walking
        them: cheap enough to be read after every refresh."""
        members = len(self._ids) + len(self._late)
        held = (
            self._numbers.buffer_info()[1] * self._numbers.itemsize
            + 8 * len(self._ids)
            + 49 * members
            + self._chars
            + _bitmap_bytes(self._base)
            + 68 * len(self._late)
        )
        return held

    def _fold(self) -> None:
        """Merges the members committed out of number order into the arrays (one pass)."""
        merged = sorted(itertools.chain(zip(self._numbers, self._ids, strict=True), self._late.items()))
        self._numbers = array("I", (n for n, _ in merged))
        self._ids = [member_id for _, member_id in merged]
        self._base = BitMap(self._numbers)
        self._late = {}


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
        self.facts = fact_windows.FactWindows()
        # The database sessions' TimeZone, in which statements draw windows of days.
        self.zone = ""

    def windows(self, window: fact_windows.Window, now: dt.datetime) -> tuple[BitMap, BitMap]:
        """(inside, undecided) of a summary test (`fact_windows.FactWindows.split`)."""
        return self.facts.split(window, now, self.zone)

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

    def dimensions(self) -> dict[str, frozenset[str]]:
        """Each dimension held -> the values members hold now."""
        return {d: frozenset(values) for d, values in self._tags.items()}

    def memory_bytes(self) -> int:
        bitmaps = [self.universe, *self.facts.bitmaps()]
        for held in itertools.chain(self._tags.values(), self._buckets.values()):
            bitmaps.extend(held.values())
        return sum(_bitmap_bytes(b) for b in bitmaps) + self._ids.memory_bytes()

    # Applying what the database holds (the index's, never a caller's) --------------------------

    def load_members(self, numbers: Sequence[int], ids: Sequence[str]) -> None:
        self._ids.extend(numbers, ids)
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
        self.facts.optimize()

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
        # One catching up per tenant at a time; callers arriving meanwhile share the next one, which
        # begins after they asked (so their own writes are in it): a page of the console counting a
        # hundred audiences at once took a hundred transactions of the pool, which starved.
        self._catching_up: KeyedBatcher[str, None, TenantBitmaps | None] = KeyedBatcher(
            self._catch_up, in_flight=1, max_size=100_000
        )

    def current(self, tenant_id: str) -> TenantBitmaps | None:
        """The tenant's bitmaps as last refreshed; None when not loaded, or not refreshed for
        MAX_AGE_SECONDS (the database may be unreachable): evaluate in SQL then."""
        held = self._loaded.get(tenant_id)
        if held is None or self._clock() - self._refreshed[tenant_id] > MAX_AGE_SECONDS:
            return None
        return held

    async def caught_up(self, tenant_id: str) -> TenantBitmaps | None:
        """The tenant's bitmaps reflecting every member and tag change committed before this call,
        as a statement would see them (a caller's own writes included): the feed's entries up to
        its end, and those of transactions committed but not given a position yet (the sequencer
        does that every 50 ms; they are applied again when it has: harmless). None as for
        `current`, or when more than CALL_ENTRIES entries are missing (a burst, a recompute) or a
        refresh is applying entries: the caller's statement answers at once and the background
        refresh catches up, instead of the caller paying for both or waiting. Costs one read-only
        transaction of two statements when nothing is missing, shared by the callers that arrive
        while one runs."""
        return await self._catching_up.submit(tenant_id, None)

    async def _catch_up(self, tenant_id: str, callers: Sequence[None]) -> list[TenantBitmaps | None]:
        held = await self._caught_up_now(tenant_id)
        return [held] * len(callers)

    async def _caught_up_now(self, tenant_id: str) -> TenantBitmaps | None:
        held = self._loaded.get(tenant_id)
        lock = self._lock(tenant_id)
        if held is None or lock.locked():
            # A refresh applying entries holds the lock for up to PAGES_PER_REFRESH pages (seconds
            # after a recompute): waiting for it cost counts their deadline in a full test run.
            return None
        began = self._clock()
        async with self._db.transaction(tenant_id, readonly=True, snapshot=True) as conn:
            end = await bitmap_store.feed_end(conn)
            waiting = await bitmap_store.unpositioned_changes(conn)
            if len(waiting) >= CALL_ENTRIES:
                return None
            if waiting or _behind(held, end):
                if lock.locked():  # taken meanwhile: acquired below without waiting otherwise
                    return None
                async with lock:
                    if _behind(held, end):
                        assert end is not None
                        missing = await bitmap_store.read_changes(conn, held.position, CALL_ENTRIES, end)
                        if len(missing) == CALL_ENTRIES:
                            return None
                        await _apply(conn, held, missing)
                        held.position = end
                    await _apply(conn, held, waiting)
        self._refreshed[tenant_id] = max(self._refreshed[tenant_id], began)
        return held

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
        held = self._loaded.get(tenant_id)
        if held is not None:
            return not await self._follow(tenant_id, held, PAGES_PER_REFRESH)
        began = self._clock()
        started = time.monotonic()
        async with (
            self._db.transaction(tenant_id, readonly=True, snapshot=True) as conn,
            self._lock(tenant_id),
        ):
            held = await load(conn)
            self._loaded[tenant_id] = held
            self._refreshed[tenant_id] = began
            metrics.AUDIENCE_BITMAP_BYTES.labels(tenant_id).set(held.memory_bytes())
        log.info(
            "bitmap index loaded",
            tenant=tenant_id,
            members=len(held.universe),
            bytes=held.memory_bytes(),
            seconds=round(time.monotonic() - started, 3),
        )
        return False

    async def _follow(self, tenant_id: str, held: TenantBitmaps, pages: int) -> bool:
        """Brings `held` to the feed's end as of now, at most `pages` pages; True when it got there.
        The end is read first in one round trip: when nothing is missing (the usual case) no
        transaction is opened and no refresh under way is waited for. A connection is taken
        before the lock, as `caught_up` does, so neither holds the lock waiting for the pool."""
        began = self._clock()
        async with self._db.reading(tenant_id) as conn:
            end = await bitmap_store.feed_end(conn)
        done = True
        if _behind(held, end):
            async with (
                self._db.transaction(tenant_id, readonly=True, snapshot=True) as conn,
                self._lock(tenant_id),
            ):
                done = await _follow(conn, held, end, pages)
            metrics.AUDIENCE_BITMAP_BYTES.labels(tenant_id).set(held.memory_bytes())
        self._refreshed[tenant_id] = max(self._refreshed[tenant_id], began)
        return done

    def _lock(self, tenant_id: str) -> asyncio.Lock:
        return self._locks.setdefault(tenant_id, asyncio.Lock())


async def load(conn: Connection) -> TenantBitmaps:
    """The tenant's bitmaps as `conn`'s snapshot (REPEATABLE READ) sees them, at its feed's end."""
    held = TenantBitmaps(await bitmap_store.feed_end(conn))
    held.zone = await bitmap_store.session_zone(conn)
    numbered = await bitmap_store.number_range(conn)
    if numbered is not None:
        for low in range(numbered[0], numbered[1] + 1, LOAD_CHUNK):
            numbers, ids = await bitmap_store.member_chunk(conn, low, low + LOAD_CHUNK - 1)
            if numbers:
                held.load_members(numbers, ids)
    for field in sorted(BUCKETED_FIELDS):
        for value, numbers in await bitmap_store.profile_buckets(conn, field):
            held.load_bucket(field, value, numbers)
    for dimension in await bitmap_store.tag_dimensions(conn):
        for value, numbers in await bitmap_store.current_tags(conn, dimension):
            held.load_tag(dimension, value, numbers)
    for source in (fact_windows.EVENTS, fact_windows.PURCHASES):
        for row in await bitmap_store.fact_days(conn, source):
            held.facts.load(source, row["kind"], row["category"], row["day"], row["numbers"])
    held.optimize()
    return held


async def _refresh_facts(conn: Connection, held: TenantBitmaps, member_ids: Sequence[str]) -> None:
    """Puts the members' recency rows as they are now, in place of what was held of them."""
    rows = await bitmap_store.facts_of(conn, member_ids)
    held.facts.forget(BitMap(row["member_no"] for row in rows))
    for row in rows:
        if row["source"] is not None:
            held.facts.put(row["source"], row["kind"], row["category"], row["member_no"], row["at"])


def _behind(held: TenantBitmaps, end: outbox.Position | None) -> bool:
    return end is not None and (held.position is None or end > held.position)


async def _follow(conn: Connection, held: TenantBitmaps, end: outbox.Position | None, pages: int) -> bool:
    """Applies the feed's member and tag changes after `held.position` up to `end`, at most `pages`
    pages; True when it reached `end`."""
    if end is None or not _behind(held, end):
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
    acted = {row["member_id"] for row in rows if row["kind"] in bitmap_store.FACT_CHANGED}
    if acted:
        await _refresh_facts(conn, held, sorted(acted))
    named: dict[tuple[str, str], set[str]] = {}
    for row in rows:
        if row["kind"] == bitmap_store.TAG_CHANGED and None not in (row["tag_dimension"], row["tag_value"]):
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
