"""The tag catalog: versioned dimension definitions, and explaining rule dimensions for a member.

A definition is validated whole (every bad field named), stored with a content hash, and changed
only by adding a version; a create or update whose content equals the current version changes
nothing, so retries are harmless.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from memberops.tagging.v1 import models_pb2, rules_pb2

from runtime import checks, page_tokens
from runtime.db import Database
from runtime.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Violations,
)
from services.tagging import definition_store, member_store, member_tag_store, models, rules

DIMENSION = re.compile(r"^[a-z][a-z0-9_]{0,62}\Z")
MAX_VALUES = 100
MAX_VALUE = 64
MAX_DISPLAY_NAME = 64
MAX_DESCRIPTION = 1024
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# Dimensions one request may name (ExplainTags, RecomputeTags, GetTagStats): each costs a statement.
MAX_NAMED_DIMENSIONS = 1000


class Category(enum.IntEnum):
    UNSPECIFIED = 0
    CROWD = 1
    MEMBER = 2
    BEHAVIOUR = 3
    TRANSACTION = 4
    CONSUMPTION = 5
    MARKETING = 6


class Kind(enum.IntEnum):
    UNSPECIFIED = 0
    FACT = 1
    RULE = 2
    MODEL = 3
    MANUAL = 4
    STRATEGY = 5


class Refresh(enum.IntEnum):
    UNSPECIFIED = 0
    REAL_TIME = 1
    SCHEDULED = 2


class Cardinality(enum.IntEnum):
    UNSPECIFIED = 0
    SINGLE = 1
    MULTI = 2


class State(enum.IntEnum):
    UNSPECIFIED = 0
    ACTIVE = 1
    RETIRED = 2


# Kinds whose values are computed from facts (by rules or a model), not set by operators.
EVALUATED_KINDS = {Kind.FACT, Kind.RULE, Kind.MODEL}
RULE_KINDS = {Kind.FACT, Kind.RULE}


@dataclass(frozen=True)
class TagValue:
    value: str
    display_name: str = ""
    rule: rules_pb2.Rule | None = None


@dataclass(frozen=True)
class DefinitionInput:
    dimension: str
    category: int
    kind: int
    refresh_policy: int
    cardinality: int
    values: tuple[TagValue, ...]
    display_name: str = ""
    description: str = ""
    model: models_pb2.Model | None = None


@dataclass(frozen=True)
class Definition:
    spec: DefinitionInput
    version: int
    state: State
    create_time: dt.datetime
    update_time: dt.datetime


@dataclass(frozen=True)
class Explanation:
    dimension: str
    version: int
    values: tuple[str, ...]
    figures: dict[str, Any]


def _enum_field(value: int, kind: type[enum.IntEnum], v: Violations, path: str) -> None:
    if value == 0 or value not in kind.__members__.values():
        v.add(path, f"is required: one of {', '.join(m.name for m in kind if m.value)}")


def validate(spec: DefinitionInput, path: str = "tag_definition") -> DefinitionInput:
    """Raises InvalidArgument naming every bad field; returns the spec with a model's values filled in."""
    v = Violations()
    if not DIMENSION.match(spec.dimension):
        v.add(f"{path}.dimension", "must be 1-63 characters: a lower-case letter, then a-z, 0-9 or _")
    checks.text(spec.display_name, MAX_DISPLAY_NAME, v, f"{path}.display_name")
    checks.text(spec.description, MAX_DESCRIPTION, v, f"{path}.description")
    _enum_field(spec.category, Category, v, f"{path}.category")
    _enum_field(spec.kind, Kind, v, f"{path}.kind")
    _enum_field(spec.refresh_policy, Refresh, v, f"{path}.refresh_policy")
    _enum_field(spec.cardinality, Cardinality, v, f"{path}.cardinality")
    if spec.kind == Kind.MODEL:
        spec = _validate_model(spec, v, path)
    else:
        if spec.model is not None:
            v.add(f"{path}.model", "only MODEL dimensions take a model")
        if not 1 <= len(spec.values) <= MAX_VALUES:
            v.add(f"{path}.values", f"must hold 1-{MAX_VALUES} values")
    _validate_values(spec, v, path)
    v.raise_if_any()
    return spec


def _validate_values(spec: DefinitionInput, v: Violations, path: str) -> None:
    seen: set[str] = set()
    for i, value in enumerate(spec.values[:MAX_VALUES]):
        vp = f"{path}.values[{i}]"
        if not 1 <= len(value.value) <= MAX_VALUE:
            v.add(f"{vp}.value", f"must be 1-{MAX_VALUE} characters")
        elif value.value in seen:
            v.add(f"{vp}.value", "appears twice in the dimension")
        seen.add(value.value)
        checks.text(value.display_name, MAX_DISPLAY_NAME, v, f"{vp}.display_name")
        if spec.kind == Kind.MODEL and value.rule is not None:
            v.add(f"{vp}.rule", "MODEL values are decided by the model and take no rule")
        if spec.kind in RULE_KINDS:
            if value.rule is None:
                v.add(f"{vp}.rule", "is required for FACT and RULE dimensions")
            else:
                rules.validate(value.rule, v, f"{vp}.rule")
        elif value.rule is not None and spec.kind in (Kind.MANUAL, Kind.STRATEGY):
            v.add(f"{vp}.rule", "MANUAL and STRATEGY values are set by operators and take no rule")


def _validate_model(spec: DefinitionInput, v: Violations, path: str) -> DefinitionInput:
    """Checks a MODEL dimension against its model; fills in the model's values when none are given."""
    if spec.model is None:
        models.validate(models_pb2.Model(), v, f"{path}.model")
        return spec
    models.validate(spec.model, v, f"{path}.model")
    info = models.info(spec.model)
    if info is None:
        return spec
    if spec.cardinality and spec.cardinality != info.cardinality:
        v.add(f"{path}.cardinality", f"this model gives {Cardinality(info.cardinality).name} values")
    if info.population and spec.refresh_policy == Refresh.REAL_TIME:
        v.add(f"{path}.refresh_policy", "RFM models compare every member with all members: use SCHEDULED")
    if info.values is None:
        if spec.values:
            v.add(f"{path}.values", "this model takes its values from the data (categories); list none")
        return spec
    if not spec.values:
        return dataclasses.replace(spec, values=tuple(TagValue(value) for value in info.values))
    if tuple(value.value for value in spec.values) != info.values:
        v.add(f"{path}.values", f"must be empty or exactly the model's values: {', '.join(info.values)}")
    return spec


def to_body(spec: DefinitionInput) -> dict[str, Any]:
    """The stored form: plain JSON, rules in protobuf JSON form."""
    return {
        "dimension": spec.dimension,
        "display_name": spec.display_name,
        "description": spec.description,
        "category": int(spec.category),
        "kind": int(spec.kind),
        "refresh_policy": int(spec.refresh_policy),
        "cardinality": int(spec.cardinality),
        "values": [
            {
                "value": value.value,
                "display_name": value.display_name,
                "rule": json_format.MessageToDict(value.rule) if value.rule is not None else None,
            }
            for value in spec.values
        ],
        "model": json_format.MessageToDict(spec.model) if spec.model is not None else None,
    }


def from_body(body: dict[str, Any]) -> DefinitionInput:
    return DefinitionInput(
        dimension=body["dimension"],
        display_name=body["display_name"],
        description=body["description"],
        category=body["category"],
        kind=body["kind"],
        refresh_policy=body["refresh_policy"],
        cardinality=body["cardinality"],
        values=tuple(
            TagValue(
                value=value["value"],
                display_name=value["display_name"],
                rule=json_format.ParseDict(value["rule"], rules_pb2.Rule())
                if value["rule"] is not None
                else None,
            )
            for value in body["values"]
        ),
        model=json_format.ParseDict(body["model"], models_pb2.Model()) if body.get("model") else None,
    )


def content_hash(spec: DefinitionInput) -> str:
    """Equal for equal definitions; rules are hashed by their deterministic wire form."""
    body = to_body(spec)
    for value, stored in zip(spec.values, body["values"], strict=True):
        stored["rule"] = (
            base64.b64encode(value.rule.SerializeToString(deterministic=True)).decode()
            if value.rule
            else None
        )
    if spec.model is not None:
        body["model"] = base64.b64encode(spec.model.SerializeToString(deterministic=True)).decode()
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def named_dimensions(names: Sequence[str], violations: Violations, path: str) -> dict[str, int]:
    """Each dimension `names` lists, once, with the index it first has: a name listed twice is
    worked on once. More than MAX_NAMED_DIMENSIONS names is a violation of `path`, since every
    name costs a statement and a long list would run past any deadline."""
    if len(names) > MAX_NAMED_DIMENSIONS:
        violations.add(path, f"at most {MAX_NAMED_DIMENSIONS} dimensions")
    chosen: dict[str, int] = {}
    for i, name in enumerate(names[:MAX_NAMED_DIMENSIONS]):
        if not DIMENSION.match(name):
            violations.add(f"{path}[{i}]", "is not a dimension name")
        chosen.setdefault(name, i)
    return chosen


def dimension_from_name(name: str, field: str) -> str:
    prefix = "tagDefinitions/"
    dimension = name.removeprefix(prefix)
    if not name.startswith(prefix) or not DIMENSION.match(dimension):
        raise InvalidArgument.field(field, "must be a resource name of the form tagDefinitions/{dimension}")
    return dimension


class Catalog:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, tenant_id: str, spec: DefinitionInput) -> Definition:
        spec = validate(spec)
        digest = content_hash(spec)
        async with self._db.transaction(tenant_id) as conn:
            created = await definition_store.insert_definition(
                conn, tenant_id, spec.dimension, to_body(spec), digest
            )
            found = await definition_store.get_definition(conn, spec.dimension, None)
            if not created and (found is None or found[1] != digest):
                raise AlreadyExists(f"tagDefinitions/{spec.dimension} exists with other content; update it")
        assert found is not None
        return _definition(found[0])

    async def seed(self, tenant_id: str, specs: Sequence[DefinitionInput]) -> int:
        """Creates the dimensions the tenant does not have yet; never touches existing ones, so a
        tenant's own version of a built-in (or its retirement) survives restarts. Returns how many."""
        created = 0
        async with self._db.transaction(tenant_id) as conn:
            for spec in map(validate, specs):
                body = to_body(spec)
                created += await definition_store.insert_definition(
                    conn, tenant_id, spec.dimension, body, content_hash(spec)
                )
        return created

    async def update(self, tenant_id: str, spec: DefinitionInput, expected_version: int) -> Definition:
        spec = validate(spec)
        digest = content_hash(spec)
        async with self._db.transaction(tenant_id) as conn:
            current = await definition_store.lock_definition(conn, spec.dimension)
            if current is None:
                raise NotFound(f"tagDefinitions/{spec.dimension} not found")
            row, current_digest = current
            if row["state"] == State.RETIRED:
                raise FailedPrecondition(f"tagDefinitions/{spec.dimension} is retired")
            # The current content again is a retry of the update that made it: nothing changes.
            if current_digest != digest:
                if expected_version and expected_version != row["version"]:
                    raise Aborted(
                        f"tagDefinitions/{spec.dimension} is at version {row['version']}, "
                        f"not {expected_version}"
                    )
                _check_unchanged_shape(from_body(row["body"]), spec)
                await definition_store.add_definition_version(
                    conn, tenant_id, spec.dimension, row["version"] + 1, to_body(spec), digest
                )
            found = await definition_store.get_definition(conn, spec.dimension, None)
        assert found is not None
        return _definition(found[0])

    async def get(self, tenant_id: str, dimension: str, version: int) -> Definition:
        if version < 0:
            raise InvalidArgument.field("version", "must be 0 (current) or a version number")
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            found = await definition_store.get_definition(conn, dimension, version or None)
        if found is None:
            raise NotFound(
                f"tagDefinitions/{dimension}" + (f" version {version}" if version else "") + " not found"
            )
        return _definition(found[0])

    async def list_page(
        self, tenant_id: str, page_size: int, page_token: str, include_retired: bool
    ) -> tuple[list[Definition], str]:
        size = page_tokens.page_size(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = page_tokens.decode_matching(page_token, "tagDefinitions", DIMENSION)
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            rows = await definition_store.list_definitions(conn, after, size + 1, include_retired)
        page = [_definition(row) for row in rows[:size]]
        return page, page_tokens.encode("tagDefinitions", page[-1].spec.dimension) if len(rows) > size else ""

    async def retire(self, tenant_id: str, dimension: str) -> Definition:
        async with self._db.transaction(tenant_id) as conn:
            if not await definition_store.retire_definition(conn, dimension):
                raise NotFound(f"tagDefinitions/{dimension} not found")
            found = await definition_store.get_definition(conn, dimension, None)
        assert found is not None
        return _definition(found[0])

    async def explain(
        self, tenant_id: str, member_id: str, dimensions: Sequence[str], now: dt.datetime
    ) -> list[Explanation]:
        violations = Violations()
        checks.natural_id(member_id, violations, "member")
        named = named_dimensions(dimensions, violations, "dimensions")
        violations.raise_if_any()
        async with self._db.transaction(tenant_id, readonly=True, plans="custom") as conn:
            if await member_store.get_member(conn, member_id) is None:
                raise NotFound(f"members/{member_id} not found")
            definitions = [
                _definition(row) for row in await definition_store.list_definitions(conn, "", 10_000, False)
            ]
            by_dimension = {d.spec.dimension: d for d in definitions}
            chosen = (
                [(i, name, by_dimension.get(name)) for name, i in named.items()]
                if named
                else [(i, d.spec.dimension, d) for i, d in enumerate(definitions)]
            )
            explanations = []
            for i, name, definition in chosen:
                if definition is None:
                    raise NotFound(f"dimensions[{i}]: tagDefinitions/{name} not found or retired")
                if definition.spec.kind not in EVALUATED_KINDS:
                    if named:
                        raise InvalidArgument.field(
                            f"dimensions[{i}]",
                            f"{definition.spec.dimension} is set by operators, not by rules",
                        )
                    continue
                explanations.append(await self._explain_one(conn, definition, member_id, now))
        return explanations

    @staticmethod
    async def _explain_one(
        conn: Any, definition: Definition, member_id: str, now: dt.datetime
    ) -> Explanation:
        spec = definition.spec
        compiled = compile_definition(spec, filtered=True)
        row = await member_tag_store.evaluate(conn, compiled.sql, compiled.args(now, [member_id]))
        figures = {label: _plain(row[column]) for column, label in compiled.figures.items()}
        return Explanation(spec.dimension, definition.version, tuple(row["tag_values"]), figures)


def compile_definition(spec: DefinitionInput, *, filtered: bool) -> rules.CompiledDimension:
    """The one query of an evaluated dimension, from its rules or its model."""
    if spec.kind == Kind.MODEL:
        assert spec.model is not None, "validate() requires a model"
        return models.compile_model(spec.model, filtered=filtered)
    return rules.compile_dimension(
        [(value.value, value.rule) for value in spec.values],
        single=spec.cardinality == Cardinality.SINGLE,
        filtered=filtered,
    )


def kept_figures(spec: DefinitionInput) -> models.KeptFigures | None:
    """The per-member figures a population model keeps between recomputes; None for the rest."""
    if spec.kind != Kind.MODEL or spec.model is None:
        return None
    return models.kept_figures(spec.model, spec.dimension)


def _check_unchanged_shape(stored: DefinitionInput, spec: DefinitionInput) -> None:
    """What an update may not change: kind, cardinality and the model (its parameters it may)."""
    if (stored.kind, stored.cardinality) != (spec.kind, spec.cardinality):
        raise InvalidArgument.field(
            "tag_definition.kind", "kind and cardinality cannot change; define a new dimension"
        )
    if _model_name(stored) != _model_name(spec):
        raise InvalidArgument.field(
            "tag_definition.model",
            "the model cannot change (its parameters can); define a new dimension",
        )


def _model_name(spec: DefinitionInput) -> str | None:
    return spec.model.WhichOneof("model") if spec.model is not None else None


def _plain(value: Any) -> Any:
    """Figures as JSON-friendly numbers, text and booleans."""
    if value is None or isinstance(value, bool | str):
        return value
    return float(value)


def _definition(row: Any) -> Definition:
    return Definition(
        spec=from_body(row["body"]),
        version=row["version"],
        state=State(row["state"]),
        create_time=row["create_time"],
        update_time=row["update_time"],
    )
