"""Audience rules to parameterised SQL over tagging's published read-only views.

Conditions on profile fields, attributes, orders and events are tagging's rule language and compile
through tagging's compiler (`services.tagging.rules`) pointed at the views, so each operand has one
implementation: every aggregate becomes one grouped subquery left-joined to the members. Tag
conditions become (NOT) EXISTS over the members' current tags; a reference to another audience is
that audience's current rule, inlined. Caller text only ever reaches PostgreSQL as a bound parameter.

The statement is the same for a whole population and for one member (`filtered`): then every
subquery is restricted to that member's rows, which is what makes CheckMembership fast.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from memberops.audience.v1 import audience_pb2

from services.common.errors import FailedPrecondition
from services.tagging import rules

VIEWS = rules.Relations(
    members="tagging_read.members",
    orders="tagging_read.orders",
    order_lines="tagging_read.order_lines",
    events="tagging_read.events",
)
CURRENT_TAGS = "tagging_read.current_member_tags"
NAME_PREFIX = "audiences/"

Match = audience_pb2.TagMatch


@dataclass(frozen=True)
class Compiled:
    """`predicate` over the member row `m` of `VIEWS.members`, with `joins` for its aggregates.

    `$1` is the evaluation time; when compiled `filtered`, `$2` lists the only members evaluated.
    """

    predicate: str
    joins: str
    params: tuple[Any, ...]
    member_filter: str
    # (dimension, values or None for any value) of each tag condition that can put a member in.
    tag_matches: tuple[tuple[str, tuple[str, ...] | None], ...] = ()

    def args(self, now: dt.datetime, member_ids: Sequence[str] | None = None) -> list[Any]:
        args = [now, *self.params[1:]]
        if member_ids is not None:
            assert self.member_filter, "compiled without a member filter"
            args[1] = list(member_ids)
        return args

    def next_param(self, offset: int = 1) -> str:
        """The placeholder of an argument appended after the compiled ones."""
        return f"${len(self.params) + offset}"

    @property
    def _from(self) -> str:
        # The evaluation time is named even when no condition reads it, so its type is always known
        # (a one-time filter for the planner).
        where = "\nWHERE $1::timestamptz IS NOT NULL"
        if self.member_filter:
            where += f" AND m.member_id = ANY({self.member_filter})"
        return f"FROM {VIEWS.members} m\n{self.joins}{where}"

    def members_sql(self) -> str:
        """`SELECT member_id` of every member in the audience, in no particular order."""
        return f"SELECT m.member_id {self._from} AND {self.predicate}"

    def check_sql(self) -> str:
        """A row per (filtered) member that exists, saying whether it is in the audience."""
        return f"SELECT m.member_id, {self.predicate} AS is_member {self._from}"


@dataclass
class _State:
    references: Mapping[str, audience_pb2.AudienceRule]
    tag_matches: list[tuple[str, tuple[str, ...] | None]] = field(default_factory=list)


def compile_audience(
    rule: audience_pb2.AudienceRule,
    references: Mapping[str, audience_pb2.AudienceRule],
    *,
    filtered: bool = False,
) -> Compiled:
    """Compiles a validated rule; `references` holds the current rule of every audience it reaches."""
    b = rules.Builder(relations=VIEWS)
    now = b.param(None, "timestamptz")
    if filtered:
        b.member_filter = b.param([], "text[]")
    state = _State(references)
    predicate = f"COALESCE({_predicate(rule, b, now, state, ())}, false)"
    joins = rules.aggregate_joins(b, now)
    matches = tuple(dict.fromkeys(state.tag_matches))
    return Compiled(predicate, joins, tuple(b.params), b.member_filter, matches)


def _predicate(
    rule: audience_pb2.AudienceRule, b: rules.Builder, now: str, state: _State, stack: tuple[str, ...]
) -> str:
    node = rule.WhichOneof("node")
    if node in ("all", "any"):
        parts = [f"COALESCE({_predicate(r, b, now, state, stack)}, false)" for r in getattr(rule, node).rules]
        if not parts:
            return "true" if node == "all" else "false"
        return "(" + f" {'AND' if node == 'all' else 'OR'} ".join(parts) + ")"
    if node == "not":
        return f"(NOT COALESCE({_predicate(getattr(rule, 'not'), b, now, state, stack)}, false))"
    if node == "condition":
        return rules.condition_predicate(rule.condition, b, now)
    if node == "tag":
        return _tag(rule.tag, b, state)
    assert node == "audience", "validate() runs before compile"
    referenced = rule.audience.removeprefix(NAME_PREFIX)
    if referenced in stack:
        raise FailedPrecondition(f"audiences/{referenced} references itself through {', '.join(stack)}")
    found = state.references.get(referenced)
    if found is None:
        raise FailedPrecondition(f"audiences/{referenced}, which the audience references, no longer exists")
    return _predicate(found, b, now, state, (*stack, referenced))


def _tag(tag: audience_pb2.TagCondition, b: rules.Builder, state: _State) -> str:
    dimension = b.param(tag.dimension, "text")
    held = f"SELECT 1 FROM {CURRENT_TAGS} t WHERE t.member_id = m.member_id AND t.dimension = {dimension}"
    if tag.match == Match.TAG_MATCH_HAS_ANY_VALUE:
        state.tag_matches.append((tag.dimension, None))
        return f"EXISTS ({held})"
    values = tuple(tag.values)
    test = f"EXISTS ({held} AND t.value = ANY({b.param(list(values), 'text[]')}))"
    if tag.match == Match.TAG_MATCH_NONE_OF:
        return f"(NOT {test})"
    state.tag_matches.append((tag.dimension, values))
    return test
