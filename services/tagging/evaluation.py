"""Tag evaluation: the full set-based recompute, the real-time refresh of members, and history.

Both paths run one compiled statement per dimension that writes only what changed. The refresh
runs right after the fact's transaction (see realtime.py), locks its members first so two
refreshes of one member never race, and re-reads the facts committed before it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runtime import checks, page_tokens
from runtime.db import Connection, Database
from runtime.errors import FailedPrecondition, InvalidArgument, NotFound, Violations
from services.tagging import (
    catalog,
    correction_store,
    definition_store,
    due_store,
    history_store,
    member_store,
    member_tag_store,
    models,
    recompute_timing,
    refresh_store,
    rfm_figure_store,
    rules,
)

# Dimensions recomputed at once, each in its own transaction on its own connection: they touch
# disjoint rows, and two let PostgreSQL use both cores of a small machine.
RECOMPUTE_PARALLELISM = 2
# Bits of the refresh queue's `inputs` (migration 0006): which kinds of fact changed; a new
# member's every real-time value is new, whatever it reads.
INPUT_BITS = {rules.Input.PROFILE: 1, rules.Input.ORDERS: 2, rules.Input.EVENTS: 4}
NEW_MEMBER = 8
# Inputs whose facts carry their own time (orders, refunds, events): arriving late, they correct
# the history (correction.py). A member's registration starts its history rather than correcting it.
FACT_BITS = INPUT_BITS[rules.Input.ORDERS] | INPUT_BITS[rules.Input.EVENTS]
# The payload pair marking a tag change an import's refresh made (FeedEntry.backfilled).
BACKFILLED_PAYLOAD = "'backfilled', true"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_CHANGE_MEMBERS = 10_000
MAX_OPERATOR = 64
MAX_REASON = 256
OPERATOR_KINDS = {catalog.Kind.MANUAL, catalog.Kind.STRATEGY}
# An incremental recompute evaluating more than this share of the tenant's members runs whole: the
# statement over every member is then cheaper than the one over a member list.
INCREMENTAL_SHARE = 0.25


@dataclass(frozen=True)
class MemberTag:
    member_id: str
    dimension: str
    value: str
    definition_version: int
    source: int
    valid_from: dt.datetime
    valid_to: dt.datetime | None
    set_by: str
    reason: str
    removed_by: str = ""
    removed_reason: str = ""
    # When MemberOps came to believe the holding and, for a version a correction replaced, when
    # it stopped believing it (migration 0015).
    record_time: dt.datetime | None = None
    supersede_time: dt.datetime | None = None


@dataclass(frozen=True)
class OperatorChange:
    """An operator giving or taking one MANUAL or STRATEGY value to or from members."""

    dimension: str
    value: str
    member_ids: tuple[str, ...]
    operator: str
    reason: str


@dataclass(frozen=True)
class RecomputeResult:
    dimension: str
    definition_version: int
    added: int
    removed: int
    # Members evaluated: those due or changed when `incremental`, else every member.
    evaluated: int = 0
    incremental: bool = False


@dataclass(frozen=True)
class _Prepared:
    spec: catalog.DefinitionInput
    version: int
    compiled: rules.CompiledDimension

    @property
    def exclusive(self) -> bool:
        return self.spec.cardinality == catalog.Cardinality.SINGLE


class Tagger:
    def __init__(self, db: Database, *, incremental_share: float = INCREMENTAL_SHARE) -> None:
        self._db = db
        self._incremental_share = incremental_share
        # Compiling is pure, so a (tenant, dimension, version, filtered) compiles once per process.
        self._prepared: dict[tuple[str, str, int, bool], _Prepared] = {}
        # Seconds the last full recompute of each (tenant, dimension) took: the next one's order.
        self._took: dict[tuple[str, str], float] = {}

    async def _prepare(
        self, conn: Connection, tenant_id: str, dimension: str, version: int, *, filtered: bool
    ) -> _Prepared | None:
        key = (tenant_id, dimension, version, filtered)
        if key not in self._prepared:
            found = await definition_store.get_definition(conn, dimension, version)
            if found is None:
                return None
            spec = catalog.from_body(found[0]["body"])
            compiled = catalog.compile_definition(spec, filtered=filtered)
            self._prepared[key] = _Prepared(spec, version, compiled)
        return self._prepared[key]

    async def refresh_owed(
        self,
        conn: Connection,
        tenant_id: str,
        changes: Mapping[str, int],
        now: dt.datetime,
        *,
        backfilled: bool = False,
        correct_history: bool = True,
    ) -> None:
        """Re-evaluates the active real-time dimensions these members' changed facts feed, then
        settles their queue rows. `changes` maps a member to the input bits its callers changed;
        the bits its queue row still owes (e.g. a crashed request's) are added. `conn` must be in a
        transaction with custom plans (`Database.transaction(plans="custom")`). `backfilled`: the
        facts were imported history, so the changes' feed entries say so. Facts that happened well
        before `now` also queue their members' history for correction (correction.py), unless
        `correct_history` is off or they are `backfilled` (a history load is followed by
        RebuildTagHistory instead)."""
        ids = sorted(changes)
        await member_tag_store.lock_members(conn, ids)
        owed = await refresh_store.owed_refreshes(conn, ids)
        bits = dict(changes)
        # When the facts owed happened: the changes this refresh makes are dated by it.
        fact_times = {row["member_id"]: row["fact_time"] for row in owed if row["fact_time"] is not None}
        for row in owed:
            bits[row["member_id"]] = bits.get(row["member_id"], 0) | row["inputs"]
        if correct_history and not backfilled:
            await correction_store.queue_corrections(
                conn, tenant_id, correction_store.owed_corrections(fact_times, bits, now, FACT_BITS)
            )
        for row in await definition_store.active_definition_versions(conn):
            prepared = await self._prepare(
                conn, tenant_id, row["dimension"], row["current_version"], filtered=True
            )
            if (
                prepared is None
                or prepared.spec.kind not in catalog.EVALUATED_KINDS
                or prepared.spec.refresh_policy != catalog.Refresh.REAL_TIME
            ):
                continue
            reads = NEW_MEMBER | sum(INPUT_BITS[i] for i in prepared.compiled.inputs)
            stale = [member_id for member_id in ids if bits[member_id] & reads]
            if stale:
                await member_tag_store.apply_dimension(
                    conn,
                    tenant_id,
                    prepared.compiled,
                    now,
                    prepared.spec.dimension,
                    prepared.version,
                    prepared.exclusive,
                    stale,
                    fact_times,
                    extra_payload=BACKFILLED_PAYLOAD if backfilled else "",
                )
        await refresh_store.settle_refreshes(conn, [(row["member_id"], row["seq"]) for row in owed])

    async def recompute(
        self,
        tenant_id: str,
        dimensions: Sequence[str],
        now: dt.datetime,
        as_of: dt.datetime | None = None,
        *,
        full: bool = False,
    ) -> list[RecomputeResult]:
        """Recompute of the chosen (or all) rule dimensions, one transaction per dimension. Each
        evaluates only the members whose value time may have moved or whose facts changed since
        its previous recompute (`_incremental`), unless `full` or that cannot be known; the result
        is the same either way. With `as_of` (before `now`) the rules are evaluated then for every
        member and what they find is spliced into the past (history_store.rewrite_at): the present
        and the feed are left alone."""
        violations = Violations()
        named = catalog.named_dimensions(dimensions, violations, "dimensions")
        violations.raise_if_any()
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            current = {
                row["dimension"]: row["current_version"]
                for row in await definition_store.active_definition_versions(conn)
            }
            population = await due_store.member_count(conn)
            chosen = named or {name: i for i, name in enumerate(sorted(current))}
            prepared: list[_Prepared] = []
            for name, i in chosen.items():
                if name not in current:
                    raise NotFound(f"dimensions[{i}]: tagDefinitions/{name} not found or retired")
                item = await self._prepare(conn, tenant_id, name, current[name], filtered=False)
                assert item is not None
                if item.spec.kind in catalog.EVALUATED_KINDS:
                    prepared.append(item)
                elif named:
                    raise InvalidArgument.field(
                        f"dimensions[{i}]", f"{name} is set by operators, not by rules"
                    )
        slots = asyncio.Semaphore(RECOMPUTE_PARALLELISM)

        async def apply(item: _Prepared) -> RecomputeResult:
            async with slots, self._db.transaction(tenant_id, plans="custom") as conn:
                started = time.monotonic()
                await member_tag_store.plan_full_recompute(conn)
                if as_of is not None:
                    added, removed = await history_store.rewrite_at(
                        conn,
                        tenant_id,
                        item.compiled,
                        as_of,
                        now,
                        item.spec.dimension,
                        item.version,
                        item.exclusive,
                    )
                    return RecomputeResult(item.spec.dimension, item.version, added, removed, population)
                result = await self._recompute_now(conn, tenant_id, item, now, full, population)
            self._took[(tenant_id, item.spec.dimension)] = time.monotonic() - started
            return result

        # Longest first (the semaphore admits in call order), so the lanes end together rather than
        # one running a long dimension alone at the end.
        order = sorted(prepared, key=lambda item: self._expected_seconds(tenant_id, item), reverse=True)
        done = {r.dimension: r for r in await asyncio.gather(*(apply(item) for item in order))}
        return [done[item.spec.dimension] for item in prepared]

    async def _recompute_now(
        self, conn: Connection, tenant_id: str, item: _Prepared, now: dt.datetime, full: bool, population: int
    ) -> RecomputeResult:
        """One dimension at `now`: its changes, its mark, and its members' next moments. One
        recompute of a dimension at a time (an advisory lock): two at once would both find the
        same changed members and write the same moments."""
        dimension = item.spec.dimension
        await member_tag_store.lock_dimension(conn, tenant_id, dimension)
        unseen = await self._unseen(conn, tenant_id, item)
        timing = recompute_timing.of(item.spec)
        kept = catalog.kept_figures(item.spec)
        incremental = not full and (kept is not None or not timing.population)
        members = (
            await self._incremental(conn, item, timing, unseen, now, population) if incremental else None
        )
        if kept is not None:
            return await self._rank(conn, tenant_id, item, kept, timing, unseen, now, members, population)
        if members is None:
            added, removed = await member_tag_store.apply_dimension(
                conn, tenant_id, item.compiled, now, dimension, item.version, item.exclusive, unseen=unseen
            )
            if timing.population:
                await due_store.forget(conn, dimension)
            else:
                await due_store.store_due(conn, tenant_id, dimension, timing, now)
            return RecomputeResult(dimension, item.version, added, removed, population)
        filtered = await self._prepare(conn, tenant_id, dimension, item.version, filtered=True)
        assert filtered is not None
        added, removed = await member_tag_store.apply_dimension(
            conn,
            tenant_id,
            filtered.compiled,
            now,
            dimension,
            item.version,
            item.exclusive,
            member_ids=members,
            unseen=unseen,
        )
        if members:
            await due_store.store_due(conn, tenant_id, dimension, timing, now, members)
        return RecomputeResult(dimension, item.version, added, removed, len(members), incremental=True)

    async def _rank(
        self,
        conn: Connection,
        tenant_id: str,
        item: _Prepared,
        kept: models.KeptFigures,
        timing: recompute_timing.Timing,
        unseen: member_tag_store.Unseen,
        now: dt.datetime,
        members: list[str] | None,
        population: int,
    ) -> RecomputeResult:
        """A population model that keeps its members' figures (RFM): the figures of `members` (None:
        everyone's) are evaluated from their facts, the population's thresholds from everyone's kept
        figures, and then those members and the ones whose segment the thresholds moved are ranked
        (everyone, without a previous ranking to compare with); only the tags that changed are
        written."""
        dimension = item.spec.dimension
        if members is None or unseen.as_of is None:
            await rfm_figure_store.store(conn, tenant_id, dimension, kept, now, members)
        else:
            # Members with facts since the mark from all their orders; the rest only by the orders
            # that entered or left the window since (those due by time alone).
            facts = sorted(unseen.fact_times)
            await rfm_figure_store.store(conn, tenant_id, dimension, kept, now, facts)
            await rfm_figure_store.move(conn, tenant_id, dimension, kept, now, unseen.as_of, facts)
        ranking = await rfm_figure_store.rank(
            conn, tenant_id, dimension, item.version, kept, now, since_previous=members is not None
        )
        if members is None or ranking.moved is None:
            added, removed = await member_tag_store.apply_dimension(
                conn,
                tenant_id,
                kept.ranked(ranking.thresholds),
                now,
                dimension,
                item.version,
                item.exclusive,
                unseen=unseen,
            )
            if members is None or members:
                await due_store.store_due(conn, tenant_id, dimension, timing, now, members)
            return RecomputeResult(dimension, item.version, added, removed, population)
        ranked = sorted({*members, *ranking.moved})
        added, removed = await member_tag_store.apply_dimension(
            conn,
            tenant_id,
            kept.ranked(ranking.thresholds, ranked),
            now,
            dimension,
            item.version,
            item.exclusive,
            member_ids=ranked,
            unseen=unseen,
        )
        if members:
            await due_store.store_due(conn, tenant_id, dimension, timing, now, members)
        return RecomputeResult(dimension, item.version, added, removed, len(ranked), incremental=True)

    async def _incremental(
        self,
        conn: Connection,
        item: _Prepared,
        timing: recompute_timing.Timing,
        unseen: member_tag_store.Unseen,
        now: dt.datetime,
        population: int,
    ) -> list[str] | None:
        """The members whose value (for a population model, whose own figures) may differ from
        what the dimension's previous recompute stored: those with facts it did not see and those
        whose moment (recompute_due) has come. None when every member must be evaluated: no
        previous recompute of this definition version (a new or changed definition: no moments
        stored for it), a clock before the previous recompute's, or too many members to be worth a
        member list."""
        if unseen.as_of is None or unseen.version != item.version or now < unseen.as_of:
            return None
        members = set(unseen.fact_times)
        if not timing.timeless:
            members.update(await due_store.due_members(conn, item.spec.dimension, timing, unseen.as_of, now))
        if len(members) > self._incremental_share * population:
            return None
        return sorted(members)

    async def _unseen(self, conn: Connection, tenant_id: str, item: _Prepared) -> member_tag_store.Unseen:
        """What the dimension's previous full recompute did not see, with the values its members
        had then given every fact known now: what tells a change caused by late facts (history)
        from one caused by time (see member_tag_store._UNSEEN_TIME)."""
        inputs = [i.value for i in item.compiled.inputs]
        unseen = await member_tag_store.unseen_since_mark(conn, item.spec.dimension, inputs)
        if unseen.as_of is None or not unseen.fact_times:
            return unseen
        if held_is_then(unseen, item.spec, item.version):
            held = await member_tag_store.held_values(
                conn, item.spec.dimension, sorted(unseen.fact_times), exclusive=item.exclusive
            )
            return dataclasses.replace(unseen, values_then=held)
        filtered = await self._prepare(conn, tenant_id, item.spec.dimension, item.version, filtered=True)
        assert filtered is not None
        then = await member_tag_store.values_at(
            conn, filtered.compiled, unseen.as_of, sorted(unseen.fact_times)
        )
        return dataclasses.replace(unseen, values_then=then)

    async def correction_samples(
        self, conn: Connection, tenant_id: str, owed: Sequence[correction_store.Owed], now: dt.datetime
    ) -> list[history_store.Samples]:
        """What a correction of the owed members rewrites their history from (correction.py): for
        each active real-time dimension reading the inputs their late facts changed, the rules
        evaluated from the earliest of those facts on, then daily and at every change recorded
        since. Reads only. Scheduled dimensions are left to RebuildTagHistory: a member-by-member
        evaluation of a population model (RFM) is wrong."""
        found: list[history_store.Samples] = []
        for row in await definition_store.active_definition_versions(conn):
            item = await self._prepare(
                conn, tenant_id, row["dimension"], row["current_version"], filtered=True
            )
            if (
                item is None
                or item.spec.kind not in catalog.EVALUATED_KINDS
                or item.spec.refresh_policy != catalog.Refresh.REAL_TIME
            ):
                continue
            reads = sum(INPUT_BITS[i] for i in item.compiled.inputs)
            since = {o.member_id: o.since for o in owed if o.inputs & reads}
            if not since:
                continue
            changed = await history_store.boundaries_since(conn, item.spec.dimension, since)
            instants = {m: [*correction_store.grid(t, now), *changed.get(m, [])] for m, t in since.items()}
            found.append(
                await history_store.samples_at(
                    conn, item.compiled, instants, now, item.spec.dimension, item.version, item.exclusive
                )
            )
        return found

    def _expected_seconds(self, tenant_id: str, item: _Prepared) -> float:
        """How long the last recompute of the dimension took; before one, a guess that ranks models
        and dimensions reading more kinds of fact first."""
        took = self._took.get((tenant_id, item.spec.dimension))
        if took is not None:
            return took
        return len(item.compiled.inputs) + (1.0 if item.spec.kind == catalog.Kind.MODEL else 0.0)

    async def change_operator_tags(
        self, tenant_id: str, change: OperatorChange, *, add: bool, now: dt.datetime
    ) -> int:
        """Adds or removes an operator's value on members; returns how many members changed."""
        _validate_change(change)
        ids = sorted(set(change.member_ids))
        async with self._db.transaction(tenant_id) as conn:
            found = await definition_store.get_definition(conn, change.dimension, None)
            if found is None:
                raise NotFound(f"dimension: tagDefinitions/{change.dimension} not found")
            row = found[0]
            spec = catalog.from_body(row["body"])
            if row["state"] != catalog.State.ACTIVE:
                raise FailedPrecondition(f"dimension: tagDefinitions/{change.dimension} is retired")
            if spec.kind not in OPERATOR_KINDS:
                raise InvalidArgument.field(
                    "dimension", "is decided by rules; operators set MANUAL and STRATEGY ones"
                )
            if change.value not in {v.value for v in spec.values}:
                raise InvalidArgument.field(
                    "value", f"is not a value of {change.dimension}; add it to the definition"
                )
            missing = await member_store.missing_members(conn, ids)
            if missing:
                first = next(i for i, m in enumerate(change.member_ids) if m in missing)
                raise InvalidArgument.field(
                    f"member_ids[{first}]", f"unknown member(s) {', '.join(sorted(missing)[:5])}"
                )
            await member_tag_store.lock_members(conn, ids)
            if add:
                return await member_tag_store.add_operator_tags(
                    conn,
                    tenant_id,
                    change.dimension,
                    change.value,
                    row["version"],
                    spec.cardinality == catalog.Cardinality.SINGLE,
                    ids,
                    change.operator,
                    change.reason,
                    now,
                )
            return await member_tag_store.remove_operator_tags(
                conn,
                tenant_id,
                change.dimension,
                change.value,
                row["version"],
                ids,
                change.operator,
                change.reason,
                now,
            )

    async def member_tags(
        self, tenant_id: str, member_id: str, as_of: dt.datetime, known_at: dt.datetime | None = None
    ) -> list[MemberTag]:
        """The member's tags at `as_of`, as believed now or, given `known_at`, as believed then."""
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            if await member_store.get_member(conn, member_id) is None:
                raise NotFound(f"members/{member_id} not found")
            if known_at is not None:
                rows = await history_store.member_tags_believed(conn, member_id, as_of, known_at)
            else:
                rows = await member_tag_store.member_tags_at(conn, member_id, as_of)
            return [_member_tag(row) for row in rows]

    async def members_tags(
        self, tenant_id: str, member_ids: Sequence[str], dimensions: Sequence[str]
    ) -> list[MemberTag]:
        """The tags the members hold now (members tagging does not know hold none)."""
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            rows = await member_tag_store.members_tags_now(conn, member_ids, dimensions)
        return [_member_tag(row) for row in rows]

    async def changes(
        self,
        tenant_id: str,
        member_id: str,
        dimension: str,
        page_size: int,
        page_token: str,
        include_superseded: bool = False,
    ) -> tuple[list[MemberTag], str]:
        violations = Violations()
        if member_id:
            checks.natural_id(member_id, violations, "member")
        if dimension and not catalog.DIMENSION.match(dimension):
            violations.add("dimension", "is not a dimension name")
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            violations.add(
                "page_size", f"must be between 1 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})"
            )
        if include_superseded:
            return await self._changes_with_superseded(
                tenant_id, member_id, dimension, page_size, page_token, violations
            )
        before = _before_id(page_token, violations)
        violations.raise_if_any()
        size = page_size or DEFAULT_PAGE_SIZE
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            rows = await member_tag_store.tag_changes(conn, member_id, dimension, before, size + 1)
        page = rows[:size]
        token = page_tokens.encode("tagChanges", page[-1]["id"]) if len(rows) > size else ""
        return [_member_tag(row) for row in page], token

    async def _changes_with_superseded(
        self,
        tenant_id: str,
        member_id: str,
        dimension: str,
        page_size: int,
        page_token: str,
        violations: Violations,
    ) -> tuple[list[MemberTag], str]:
        """As `changes`, each holding followed by the versions corrections replaced."""
        before: tuple[int, int] | None = None
        try:
            keys = page_tokens.decode(page_token, "tagChangesWithSuperseded", (int, int))
            if keys is not None:
                before = (int(keys[0]), int(keys[1]))
        except InvalidArgument as error:
            violations.add("page_token", error.violations[0].description)
        violations.raise_if_any()
        size = page_size or DEFAULT_PAGE_SIZE
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            rows = await history_store.tag_changes_with_superseded(
                conn, member_id, dimension, before, size + 1
            )
        page = rows[:size]
        token = (
            page_tokens.encode("tagChangesWithSuperseded", page[-1]["id"], page[-1]["rank"])
            if len(rows) > size
            else ""
        )
        return [_member_tag(row) for row in page], token


def held_is_then(unseen: member_tag_store.Unseen, spec: catalog.DefinitionInput, version: int) -> bool:
    """Whether the values a dimension's members hold now are those its rules give at the previous
    recompute's as_of with every fact known now, so that no evaluation (for a population model, a
    whole one) is needed to know them: only recomputes write a scheduled dimension, that recompute
    evaluated this version, and every fact since is an order or event that happened later."""
    return (
        unseen.only_later and unseen.version == version and spec.refresh_policy == catalog.Refresh.SCHEDULED
    )


def _validate_change(change: OperatorChange) -> None:
    v = Violations()
    if not catalog.DIMENSION.match(change.dimension):
        v.add("dimension", "is not a dimension name")
    if not 1 <= len(change.value) <= catalog.MAX_VALUE:
        v.add("value", f"must be 1-{catalog.MAX_VALUE} characters")
    if not 1 <= len(change.member_ids) <= MAX_CHANGE_MEMBERS:
        v.add("member_ids", f"must name 1-{MAX_CHANGE_MEMBERS} members")
    for i, member_id in enumerate(change.member_ids[:MAX_CHANGE_MEMBERS]):
        if not checks.NATURAL_ID.match(member_id):
            v.add(f"member_ids[{i}]", checks.NATURAL_ID_RULE)
            break
    if not 1 <= len(change.operator) <= MAX_OPERATOR:
        v.add("operator", f"is required: who makes the change, 1-{MAX_OPERATOR} characters")
    if not 1 <= len(change.reason) <= MAX_REASON:
        v.add("reason", f"is required: why, 1-{MAX_REASON} characters")
    v.raise_if_any()


def _before_id(token: str, violations: Violations) -> int | None:
    try:
        return page_tokens.decode_one(token, "tagChanges", int)
    except InvalidArgument as error:
        violations.add("page_token", error.violations[0].description)
        return None


def _member_tag(row: Any) -> MemberTag:
    return MemberTag(
        member_id=row["member_id"],
        dimension=row["dimension"],
        value=row["value"],
        definition_version=row["definition_version"],
        source=row["source"],
        valid_from=row["valid_from"],
        valid_to=row["valid_to"],
        set_by=row["set_by"],
        reason=row["reason"],
        removed_by=row["removed_by"],
        removed_reason=row["removed_reason"],
        record_time=row["record_time"],
        supersede_time=row["supersede_time"],
    )
