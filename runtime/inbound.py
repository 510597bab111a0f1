"""What every request must be before a handler sees it: decodable, no NUL in any text, every
number finite.

These hold for every field of every RPC, so they are checked once, on the way in, rather than by
each service: PostgreSQL cannot store a NUL in text or a NaN in JSON, and a request the protobuf
runtime cannot decode (corrupt bytes, invalid UTF-8 in a string, nesting past its limit) is the
caller's mistake, not ours. A refused request becomes INVALID_ARGUMENT naming the field, with a
`BadRequest` detail, and reaches no handler.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

from google.protobuf import message as protobuf_message
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from runtime.errors import FieldViolation, InvalidArgument

Deserializer = Callable[[bytes], Any]
# Enough to tell the caller what to fix; a request with more is not worth listing in full.
_MAX_LISTED = 20
_STRUCT_TYPES = frozenset({"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"})


class Refused:
    """Stands in for a request that failed the checks, so the handler's wrapper can raise the
    error inside the call (a deserializer that raises makes grpc answer UNKNOWN)."""

    __slots__ = ("error",)

    def __init__(self, error: InvalidArgument) -> None:
        self.error = error


def guarded(deserializer: Deserializer | None) -> Deserializer | None:
    """`deserializer` that returns a `Refused` instead of a message that breaks the rules above."""
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            request = deserializer(data)
        except protobuf_message.DecodeError:
            return Refused(
                InvalidArgument.field(
                    "request",
                    "could not be decoded: corrupt bytes, invalid UTF-8 in a string "
                    "or messages nested too deep",
                )
            )
        # A NUL in a string and a non-finite double each leave a zero byte in the encoding, so a
        # request without one needs no walk (most requests: proto3 omits zero values).
        if b"\x00" in data and isinstance(request, protobuf_message.Message) and not _clean(request):
            return Refused(InvalidArgument(_first(_violations(request, ""), _MAX_LISTED)))
        return request

    return decode


def admit(request: Any, prefix: str = "") -> Any:
    """The request itself, or the error that refused it raised, its fields put under `prefix`
    (a stream's `requests[k]`)."""
    if not isinstance(request, Refused):
        return request
    if not prefix:
        raise request.error
    raise InvalidArgument(
        FieldViolation(prefix if v.field == "request" else f"{prefix}.{v.field}", v.description)
        for v in request.error.violations
    )


# One field's part in the fast check: its name, what it holds, whether it repeats; for a message,
# whether it is a map of messages.
_TEXT, _NUMBER, _MESSAGE, _MAP_OF_MESSAGES, _MAP_OF_TEXT = range(5)
_Plan = tuple[tuple[str, int, bool], ...]
_plans: dict[str, _Plan] = {}
_planning: set[str] = set()


def _plan(descriptor: Descriptor) -> _Plan:
    """The fields of a message type that can hold text or a double, directly or below."""
    plan = _plans.get(descriptor.full_name)
    if plan is None:
        _planning.add(descriptor.full_name)
        steps: list[tuple[str, int, bool]] = []
        for field in descriptor.fields:
            entry = field.message_type
            if entry is not None and entry.GetOptions().map_entry:
                value = entry.fields_by_name["value"]
                if value.message_type is None:
                    steps.append((field.name, _MAP_OF_TEXT, True))
                elif _holds_text_or_numbers(value.message_type):
                    steps.append((field.name, _MAP_OF_MESSAGES, True))
            elif entry is not None:
                if _holds_text_or_numbers(entry):
                    steps.append((field.name, _MESSAGE, field.is_repeated))
            elif field.type == FieldDescriptor.TYPE_STRING:
                steps.append((field.name, _TEXT, field.is_repeated))
            elif field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
                steps.append((field.name, _NUMBER, field.is_repeated))
        plan = _plans[descriptor.full_name] = tuple(steps)
        _planning.discard(descriptor.full_name)
    return plan


def _holds_text_or_numbers(descriptor: Descriptor) -> bool:
    """Timestamps, dates and the like are skipped whole; a type still being planned (one that
    refers to itself) counts as holding."""
    name = descriptor.full_name
    return name in _STRUCT_TYPES or name in _planning or bool(_plan(descriptor))


def _clean(message: protobuf_message.Message) -> bool:
    """Whether no text below `message` has a NUL and no number is NaN or infinite: the common
    case, answered without building a path per field (`_violations` names what is wrong)."""
    kind_name = message.DESCRIPTOR.full_name
    if kind_name == "google.protobuf.Struct":
        return _clean_struct(message)
    if kind_name == "google.protobuf.Value":
        return _clean_value(message)
    plan = _plan(message.DESCRIPTOR)  # type: ignore[arg-type]
    return all(_clean_field(message, name, kind, repeated) for name, kind, repeated in plan)


def _clean_field(message: Any, name: str, kind: int, repeated: bool) -> bool:
    if kind == _MESSAGE:
        if repeated:
            return all(_clean(item) for item in getattr(message, name))
        return not message.HasField(name) or _clean(getattr(message, name))
    if kind == _TEXT:
        if repeated:
            return not any("\x00" in item for item in getattr(message, name))
        return "\x00" not in getattr(message, name)
    if kind == _NUMBER:
        return all(map(math.isfinite, getattr(message, name) if repeated else (getattr(message, name),)))
    entries = getattr(message, name)
    if any("\x00" in key for key in entries if isinstance(key, str)):
        return False
    if kind == _MAP_OF_MESSAGES:
        return all(_clean(v) for v in entries.values())
    return not any(isinstance(v, str) and "\x00" in v for v in entries.values())


def _clean_struct(struct: Any) -> bool:
    fields = struct.fields
    return not any("\x00" in key for key in fields) and all(_clean_value(v) for v in fields.values())


def _clean_value(value: Any) -> bool:
    which = value.WhichOneof("kind")
    if which == "number_value":
        return math.isfinite(value.number_value)
    if which == "string_value":
        return "\x00" not in value.string_value
    if which == "struct_value":
        return _clean_struct(value.struct_value)
    if which == "list_value":
        return all(_clean_value(item) for item in value.list_value.values)
    return True


def _first(violations: Iterator[FieldViolation], limit: int) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    for violation in violations:
        found.append(violation)
        if len(found) == limit:
            break
    return found


def _violations(message: protobuf_message.Message, path: str) -> Iterator[FieldViolation]:
    if message.DESCRIPTOR.full_name in _STRUCT_TYPES:
        yield from _struct_violations(message, path)
        return
    for field, value in message.ListFields():
        name = f"{path}.{field.name}" if path else field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                entry = f"{name}[{key!r}]" if isinstance(key, str) else f"{name}[{key}]"
                if isinstance(key, str) and "\x00" in key:
                    yield FieldViolation(name, "must not contain a NUL character in a key")
                yield from _value_violations(value_field, item, entry)
        elif field.is_repeated:
            for i, item in enumerate(value):
                yield from _value_violations(field, item, f"{name}[{i}]")
        else:
            yield from _value_violations(field, value, name)


def _value_violations(field: FieldDescriptor, value: Any, path: str) -> Iterator[FieldViolation]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        yield from _violations(value, path)
    elif field.type == FieldDescriptor.TYPE_STRING:
        if "\x00" in value:
            yield FieldViolation(path, "must not contain a NUL character")
    elif field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT) and not math.isfinite(value):
        yield FieldViolation(path, "must be a finite number")


def _struct_violations(message: protobuf_message.Message, path: str) -> Iterator[FieldViolation]:
    """Struct, Value and ListValue, named as their JSON reads: `attributes.size`, `tags[2]`."""
    kind = message.DESCRIPTOR.full_name
    if kind == "google.protobuf.Struct":
        for key, value in message.fields.items():  # type: ignore[attr-defined]
            name = f"{path}.{key}" if path else key
            if "\x00" in key:
                yield FieldViolation(path or "request", "must not contain a NUL character in a key")
            yield from _struct_violations(value, name)
    elif kind == "google.protobuf.ListValue":
        for i, value in enumerate(message.values):  # type: ignore[attr-defined]
            yield from _struct_violations(value, f"{path}[{i}]")
    else:
        which = message.WhichOneof("kind")
        if which == "string_value" and "\x00" in message.string_value:  # type: ignore[attr-defined]
            yield FieldViolation(path, "must not contain a NUL character")
        elif which == "number_value" and not math.isfinite(message.number_value):  # type: ignore[attr-defined]
            yield FieldViolation(path, "must be a finite number")
        elif which in ("struct_value", "list_value"):
            yield from _struct_violations(getattr(message, which), path)
