"""The mutations of a valid request: one field changed at a time, each as the bytes to send.

The classes are the ones an adversarial probe found defects with (issue 17): a field missing or
empty, enums out of range, integer extremes, 1 MB strings, NUL, invalid UTF-8, emoji, extreme
timestamps, NaN and infinities, nesting 200 deep, 100,000-entry lists, crafted cursors and page
tokens, and corrupt bytes. Each mutation is built lazily (a 100k list is made only when sent).
"""

from __future__ import annotations

import base64
import json
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from tests.fuzz import wire

MB = 1024 * 1024
DEEP = 200
MANY = 100_000
_MARK = "FUZZ-UTF8-MARK-7f3a9"
_INVALID_UTF8 = (b"\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x28\x8c\xbc\xff\xfe\xed\xa0\x80" + b"\xff" * 8)[
    : len(_MARK)
]
YEAR_1 = -62_135_596_800
YEAR_9999 = 253_402_300_799
# What crafted cursors and page tokens carry (issue 17, item 9).
TOKENS = (
    "99999999999999999999-1",
    "18446744073709551616-1",
    "1-9999999999999999999",
    "-1--1",
    base64.urlsafe_b64encode(json.dumps({"o": 10**30, "k": 2**64}).encode()).decode(),
    base64.urlsafe_b64encode(json.dumps([10**30, "\u0000"]).encode()).decode(),
    "\x00",
    "not a token!",
)

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}

# (field name, index into a repeated field or None)
Step = tuple[str, int | None]


@dataclass(frozen=True)
class Mutation:
    """One change to a request: `build` turns a (fresh) base into the bytes to send."""

    path: str
    kind: str
    build: Callable[[Message], bytes]


def show(steps: tuple[Step, ...]) -> str:
    return ".".join(name if index is None else f"{name}[{index}]" for name, index in steps) or "(request)"


def _walk(msg: Any, steps: tuple[Step, ...]) -> Any:
    for name, index in steps:
        msg = getattr(msg, name)
        if index is not None:
            msg = msg[index]
    return msg


def _edit(
    steps: tuple[Step, ...], change: Callable[[Any, FieldDescriptor], None]
) -> Callable[[Message], bytes]:
    """A builder that copies the base, applies `change(parent, field)` at `steps` and serializes."""

    def build(request: Message) -> bytes:
        copy = type(request)()
        copy.CopyFrom(request)
        parent = _walk(copy, steps[:-1])
        change(parent, parent.DESCRIPTOR.fields_by_name[steps[-1][0]])
        return copy.SerializeToString()

    return build


def _set(value: Any) -> Callable[[Any, FieldDescriptor], None]:
    def change(parent: Any, f: FieldDescriptor) -> None:
        if f.is_repeated:
            field = getattr(parent, f.name)
            if field:
                field[0] = value
            else:
                field.append(value)
        else:
            setattr(parent, f.name, value)

    return change


def _clear(parent: Any, f: FieldDescriptor) -> None:
    parent.ClearField(f.name)


def _emptied(parent: Any, f: FieldDescriptor) -> None:
    """A message field present but with nothing in it."""
    parent.ClearField(f.name)
    getattr(parent, f.name).SetInParent()


def _many(parent: Any, f: FieldDescriptor) -> None:
    field = getattr(parent, f.name)
    if f.message_type is not None:
        one = field[0] if field else None
        del field[:]
        for _ in range(MANY):
            item = field.add()
            if one is not None:
                item.CopyFrom(one)
        return
    one = field[0] if field else _default_scalar(f)
    del field[:]
    field.extend([one] * MANY)


def _default_scalar(f: FieldDescriptor) -> Any:
    if f.type == FieldDescriptor.TYPE_STRING:
        return "fuzz"
    if f.type == FieldDescriptor.TYPE_BYTES:
        return b"fuzz"
    if f.type == FieldDescriptor.TYPE_BOOL:
        return True
    if f.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 1.0
    return 1


def _invalid_utf8(steps: tuple[Step, ...]) -> Callable[[Message], bytes]:
    """The string at `steps` as bytes that are not UTF-8: a marker of the same length is set and
    patched in the serialized request, so no length prefix changes."""
    set_mark = _edit(steps, _set(_MARK))

    def build(request: Message) -> bytes:
        return set_mark(request).replace(_MARK.encode(), _INVALID_UTF8, 1)

    return build


def _deep(
    steps: tuple[Step, ...], fields: list[FieldDescriptor], leaf: Message
) -> Callable[[Message], bytes]:
    """The message at `steps` nested DEEP times in itself, appended by hand to the request."""
    payload = wire.nested(wire.descriptor(leaf), leaf.SerializeToString(), DEEP) or b""

    def build(request: Message) -> bytes:
        copy = type(request)()
        copy.CopyFrom(request)
        parent = _walk(copy, steps[:-1])
        last = fields[-1]
        if last.is_repeated:
            del getattr(parent, last.name)[:]
        else:
            parent.ClearField(last.name)
        return copy.SerializeToString() + wire.embed(fields, payload)

    return build


def _timestamp(seconds: int, nanos: int) -> Callable[[Any, FieldDescriptor], None]:
    def change(parent: Any, f: FieldDescriptor) -> None:
        target = getattr(parent, f.name)
        if f.is_repeated:
            target = target[0] if target else target.add()
        target.seconds, target.nanos = seconds, nanos

    return change


def _date(year: int, month: int, day: int) -> Callable[[Any, FieldDescriptor], None]:
    def change(parent: Any, f: FieldDescriptor) -> None:
        target = getattr(parent, f.name)
        target.year, target.month, target.day = year, month, day

    return change


def _struct_number(value: float) -> Callable[[Any, FieldDescriptor], None]:
    def change(parent: Any, f: FieldDescriptor) -> None:
        getattr(parent, f.name)["fuzz"] = value

    return change


def _is_token(name: str) -> bool:
    return "cursor" in name or "page_token" in name


def _string_mutations(name: str) -> Iterator[tuple[str, Any]]:
    yield "empty", ""
    yield "1MB", "x" * MB
    yield "NUL", "fu\x00zz"
    yield "emoji", "\U0001f600\U0001f648"
    yield "quote", "a b' OR 1=1;--"
    if _is_token(name):
        for i, token in enumerate(TOKENS):
            yield f"token#{i}", token


def _scalar_mutations(f: FieldDescriptor, steps: tuple[Step, ...], path: str) -> Iterator[Mutation]:
    if f.enum_type is not None:
        top = max(v.number for v in f.enum_type.values)
        for kind, value in (("enum out of range", top + 1), ("enum 999", 999), ("enum -1", -1)):
            yield Mutation(path, kind, _edit(steps, _set(value)))
    elif f.type == FieldDescriptor.TYPE_STRING:
        for kind, value in _string_mutations(f.name):
            yield Mutation(path, kind, _edit(steps, _set(value)))
        yield Mutation(path, "invalid UTF-8", _invalid_utf8(steps))
    elif f.type == FieldDescriptor.TYPE_BYTES:
        for kind, bvalue in (("empty", b""), ("1MB", b"\xff" * MB), ("NUL", b"\x00")):
            yield Mutation(path, kind, _edit(steps, _set(bvalue)))
    elif f.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        for kind, fvalue in (("NaN", math.nan), ("+Inf", math.inf), ("-Inf", -math.inf)):
            yield Mutation(path, kind, _edit(steps, _set(fvalue)))
    elif f.type == FieldDescriptor.TYPE_BOOL:
        yield Mutation(path, "true", _edit(steps, _set(True)))
    elif f.type in _INT_RANGES:
        low, high = _INT_RANGES[f.type]
        for kind, ivalue in (("min", low), ("max", high), ("-1", -1), ("0", 0)):
            if low <= ivalue <= high:
                yield Mutation(path, kind, _edit(steps, _set(ivalue)))


def _message_mutations(
    chain: tuple[FieldDescriptor, ...], steps: tuple[Step, ...], path: str, value: Message | None
) -> Iterator[Mutation]:
    f = chain[-1]
    name = wire.message_type(f).full_name
    if name == "google.protobuf.Timestamp":
        for kind, seconds, nanos in (
            ("nanos 2e9", 1_700_000_000, 2_000_000_000),
            ("nanos -1", 1_700_000_000, -1),
            ("seconds 2^62", 2**62, 0),
            ("seconds -2^62", -(2**62), 0),
            ("year 1", YEAR_1, 0),
            ("year 9999", YEAR_9999, 0),
        ):
            yield Mutation(path, kind, _edit(steps, _timestamp(seconds, nanos)))
        return
    if name == "google.type.Date" and not f.is_repeated:
        for kind, date in (("date 0-0-0", (0, 0, 0)), ("month 13", (2026, 13, 1)), ("day 32", (2026, 1, 32))):
            yield Mutation(path, kind, _edit(steps, _date(*date)))
        return
    if name == "google.protobuf.Struct" and not f.is_repeated:
        for kind, number in (("NaN", math.nan), ("+Inf", math.inf), ("-Inf", -math.inf)):
            yield Mutation(path, kind, _edit(steps, _struct_number(number)))
    if not f.is_repeated:
        yield Mutation(path, "empty message", _edit(steps, _emptied))
    if wire.cycle(wire.message_type(f)) is not None and not wire.is_map(f):
        leaf = type(value)() if value is not None else None
        if leaf is not None and value is not None:
            leaf.CopyFrom(value)
            yield Mutation(path, f"nested {DEEP} deep", _deep(steps, list(chain), leaf))


def field_mutations(
    msg: Message, prefix: tuple[Step, ...] = (), chain: tuple[FieldDescriptor, ...] = ()
) -> Iterator[Mutation]:
    """Every mutation of every field of `msg` and of the messages set in it (the first element of
    repeated ones), each field one at a time."""
    for f in wire.fields(wire.descriptor(msg)):
        here_chain = (*chain, f)
        if wire.is_map(f):
            continue
        value: Any = getattr(msg, f.name)
        if f.is_repeated:
            steps = (*prefix, (f.name, None))
            path = show(steps)
            if len(value):
                yield Mutation(path, "missing", _edit(steps, _clear))
            yield Mutation(path, f"{MANY} entries", _edit(steps, _many))
            if not len(value):
                continue
            if f.message_type is None:
                yield from _scalar_mutations(f, steps, f"{path}[0]")
                continue
            first = (*prefix, (f.name, 0))
            yield from _message_mutations(here_chain, steps, f"{path}[0]", value[0])
            yield from field_mutations(value[0], first, here_chain)
            continue
        steps = (*prefix, (f.name, None))
        path = show(steps)
        present = msg.HasField(f.name) if f.has_presence else value != f.default_value
        if present:
            yield Mutation(path, "missing", _edit(steps, _clear))
        if f.message_type is None:
            yield from _scalar_mutations(f, steps, path)
            continue
        yield from _message_mutations(here_chain, steps, path, value if present else None)
        if present and not wire.message_type(f).full_name.startswith("google."):
            yield from field_mutations(value, steps, here_chain)


def request_mutations(seed: int, noise: int = 1) -> Iterator[Mutation]:
    """Mutations of the request as a whole: nothing at all, cut short, a bad tag, and `noise`
    payloads of random bytes (seeded)."""
    rng = random.Random(seed)
    yield Mutation("(request)", "empty request", _constant(b""))
    yield Mutation("(request)", "truncated", lambda request: request.SerializeToString()[:-1])
    yield Mutation(
        "(request)", "bad tag", lambda request: b"\xff\xff\xff\xff\x0f" + request.SerializeToString()
    )
    for i in range(noise):
        yield Mutation("(request)", f"random bytes #{i}", _constant(rng.randbytes(rng.randint(1, 256))))


def _constant(payload: bytes) -> Callable[[Message], bytes]:
    def build(request: Message) -> bytes:
        return payload

    return build


def mutations(request: Message, seed: int, noise: int = 1) -> list[Mutation]:
    return [*field_mutations(request), *request_mutations(seed, noise)]
