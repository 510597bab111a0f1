"""Journey definitions from JSON (files, an operator's input, the stored rows), shape-checked first.

The Temporal data converter would build the dataclasses too, but it reports a wrong shape as a
Python type error without saying where; this reader names the path (`steps[2].wait.duration`) of
every unknown key, missing field and wrong type, then `definition.validate` checks the meaning.

Stored rows are read differently (`from_stored`): each says which format its content is in, is
upgraded to the current format and shape-checked, but never validated again. Validation happens
once, on write; a rule tightened since must not make a version a member is running unloadable.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any

from runtime.errors import InvalidArgument, Violations
from workflows.journeys.definition import JourneyDefinition, validate

_MISSING = object()

# The format `to_json` writes. 1: before formats existed (no `max_entry_delay`, no
# `wait_until_hour.preferred`); 2: with both; 3: steps may be `issue_coupon` (a reader of format 2
# would not know the key, so it must refuse such a row as a newer format, not as a broken one).
FORMAT_VERSION = 3
# Step fields added since format 2, written only when set: a definition that does not use them
# keeps the content (and content hash) it had, so storing it again is no new version.
_WRITTEN_WHEN_SET = ("issue_coupon",)


class UnreadableDefinition(RuntimeError):
    """A stored definition this code cannot read (a newer format, or content that lost its shape):
    a fault of the deployment or the data, not of the caller."""


def from_json(text: str) -> JourneyDefinition:
    """Parses, shape-checks and validates one definition; InvalidArgument names what is wrong."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidArgument.field("", f"is not JSON: {error}") from None
    return from_data(data)


def from_data(data: object) -> JourneyDefinition:
    v = Violations()
    definition = _build(JourneyDefinition, data, "", v)
    v.raise_if_any()
    assert isinstance(definition, JourneyDefinition)
    validate(definition)
    return definition


def from_stored(text: str, format_version: int = 1) -> JourneyDefinition:
    """A stored version: upgraded from its format to the current one and shape-checked, not
    validated (it was, when it was written). `format_version` 1 also reads a current row the same,
    since every upgrade only adds what is absent."""
    if format_version > FORMAT_VERSION:
        raise UnreadableDefinition(
            f"stored definition is format {format_version}; this code reads up to {FORMAT_VERSION}"
        )
    data = json.loads(text)
    if not isinstance(data, dict):
        raise UnreadableDefinition("stored definition is not a JSON object")
    for version in range(format_version, FORMAT_VERSION):
        data = _UPGRADES[version](data)
    v = Violations()
    definition = _build(JourneyDefinition, data, "", v)
    try:
        v.raise_if_any()
    except InvalidArgument as error:
        raise UnreadableDefinition(f"stored definition has lost its shape: {error.message}") from None
    assert isinstance(definition, JourneyDefinition)
    return definition


def _from_format_1(data: Any) -> Any:
    """Format 1 -> 2: the entry delay and the preferred-hour flag, at their defaults."""
    data.setdefault("max_entry_delay", "1d")
    for step in data.get("steps", ()):
        if isinstance(step, dict) and isinstance(step.get("wait_until_hour"), dict):
            step["wait_until_hour"].setdefault("preferred", False)
    return data


def _from_format_2(data: Any) -> Any:
    """Format 2 -> 3: nothing to add (a step without `issue_coupon` is not one)."""
    return data


# format N -> the upgrade to N + 1.
_UPGRADES = {1: _from_format_1, 2: _from_format_2}


def to_data(definition: JourneyDefinition) -> dict[str, Any]:
    """The JSON-ready form (tuples as lists); `from_data(to_data(d)) == d`."""
    data: dict[str, Any] = json.loads(to_json(definition))
    return data


def to_json(definition: JourneyDefinition) -> str:
    data = dataclasses.asdict(definition)
    for step in data["steps"]:
        for name in _WRITTEN_WHEN_SET:
            if step.get(name) is None:
                step.pop(name, None)
    return json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _build(kind: Any, data: object, path: str, v: Violations) -> object:
    """`data` as an instance of the type `kind`, or _MISSING after recording why it is not one."""
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        return _dataclass(kind, data, path, v)
    if origin in (types.UnionType, typing.Union):
        (inner,) = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return None if data is None else _build(inner, data, path, v)
    if origin is tuple:
        item = typing.get_args(kind)[0]
        if not isinstance(data, list | tuple):
            v.add(path, "must be a list")
            return _MISSING
        built = [_build(item, element, f"{path}[{i}]", v) for i, element in enumerate(data)]
        return tuple(built)
    if origin is dict:
        value_kind = typing.get_args(kind)[1]
        if not isinstance(data, dict):
            v.add(path, "must be an object")
            return _MISSING
        return {str(k): _build(value_kind, element, f"{path}[{k!r}]", v) for k, element in data.items()}
    return _scalar(kind, data, path, v)


def _scalar(kind: Any, data: object, path: str, v: Violations) -> object:
    # bool is an int in Python, not in a definition.
    ok = isinstance(data, kind) and not (kind is int and isinstance(data, bool))
    if not ok:
        v.add(path, f"must be a {'number' if kind is int else 'string' if kind is str else kind.__name__}")
        return _MISSING
    return data


def _dataclass(cls: Any, data: object, path: str, v: Violations) -> object:
    if not isinstance(data, Mapping):
        v.add(path, "must be an object")
        return _MISSING
    hints = _hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for name in data:
        if name not in known:
            v.add(_join(path, str(name)), "is not a field of this object")
    values: dict[str, object] = {}
    complete = True
    for name, spec in known.items():
        if name not in data:
            has_default = (
                spec.default is not dataclasses.MISSING or spec.default_factory is not dataclasses.MISSING
            )
            if not has_default:
                v.add(_join(path, name), "is required")
                complete = False
            continue
        value = _build(hints[name], data[name], _join(path, name), v)
        complete = complete and value is not _MISSING and not _holds_missing(value)
        values[name] = value
    return cls(**values) if complete else _MISSING


def _holds_missing(value: object) -> bool:
    if isinstance(value, tuple):
        return any(element is _MISSING for element in value)
    if isinstance(value, dict):
        return any(element is _MISSING for element in value.values())
    return False
