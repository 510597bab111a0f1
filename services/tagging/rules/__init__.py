"""The rule language: validation against a whitelist, and compilation to parameterised SQL.

A rule is a protobuf tree (`memberops.tagging.v1.Rule`). `validate` checks every node against the
fields, functions and operators the language allows and names the path of each mistake.
`compile_dimension` turns the rules of one dimension into one set-based query: every aggregate a
rule mentions becomes a grouped subquery over orders, order lines or events joined to the members,
and the values become one CASE expression, so a full recompute is one statement and an incremental
one is the same statement with a member filter. Caller text only ever reaches PostgreSQL as a bound
parameter.

A library with two users, and `__all__` is all either may import (the `_` modules are internals
that may change with no caller noticing): tagging compiles whole dimensions; the audience service
checks its own rules' all/any/not nesting with the same walk (`validate_tree`), compiles single
conditions over its read-only views (a `Builder` over its `Relations`, `condition_predicate`) and
answers existence tests from the recency summaries (`existence`, `summarised`, `of_events`,
`recency_of`), so each operand has one implementation whichever side reads it.
"""

from services.tagging.rules._compiler import (
    AggregateKey,
    Builder,
    CompiledDimension,
    Input,
    Relations,
    compile_dimension,
    condition_predicate,
    existence,
)
from services.tagging.rules._language import MAX_WINDOW_DAYS
from services.tagging.rules._recency import Recency, of_events, recency_of, summarised
from services.tagging.rules._validation import validate, validate_condition, validate_tree

__all__ = [
    "MAX_WINDOW_DAYS",
    "AggregateKey",
    "Builder",
    "CompiledDimension",
    "Input",
    "Recency",
    "Relations",
    "compile_dimension",
    "condition_predicate",
    "existence",
    "of_events",
    "recency_of",
    "summarised",
    "validate",
    "validate_condition",
    "validate_tree",
]
