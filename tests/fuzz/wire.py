"""Protobuf wire format by hand, for the requests the Python library will not build: invalid UTF-8
in a string, messages nested deeper than its recursion limit."""

from __future__ import annotations

from typing import cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

_LENGTH_DELIMITED = 2


def descriptor(msg: Message) -> Descriptor:
    """A message's descriptor, typed (the upb implementation's has the same interface)."""
    return cast(Descriptor, msg.DESCRIPTOR)


def fields(of: Descriptor) -> list[FieldDescriptor]:
    return cast(list[FieldDescriptor], list(of.fields))


def message_type(f: FieldDescriptor) -> Descriptor:
    """The type of a message field (the caller knows it is one)."""
    assert f.message_type is not None, f.full_name
    return f.message_type


def is_map(f: FieldDescriptor) -> bool:
    return f.message_type is not None and bool(f.message_type.GetOptions().map_entry)


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    """Field `number` holding `payload` (a string, bytes or an embedded message)."""
    return varint(number << 3 | _LENGTH_DELIMITED) + varint(len(payload)) + payload


def embed(path: list[FieldDescriptor], payload: bytes) -> bytes:
    """`payload` as the message at `path` (fields from the outermost), ready to append to the
    serialized parent: a parser merges it into the field, or appends it to a repeated one."""
    for f in reversed(path):
        if f.containing_type is not None and f.containing_type.GetOptions().map_entry:
            payload = length_delimited(1, b"k") + length_delimited(f.number, payload)
            continue
        payload = length_delimited(f.number, payload)
    return payload


def cycle(descriptor: Descriptor) -> list[FieldDescriptor] | None:
    """The shortest chain of message fields leading from `descriptor` back to itself (Rule.not,
    Struct.fields -> value -> struct_value), or None if the type is not recursive."""
    frontier: list[tuple[Descriptor, list[FieldDescriptor]]] = [(descriptor, [])]
    seen = {descriptor.full_name}
    while frontier:
        nxt: list[tuple[Descriptor, list[FieldDescriptor]]] = []
        for current, path in frontier:
            for f in fields(current):
                if f.message_type is None:
                    continue
                route = [*path, f]
                if f.message_type.full_name == descriptor.full_name:
                    return route
                if f.message_type.full_name not in seen:
                    seen.add(f.message_type.full_name)
                    nxt.append((f.message_type, route))
        frontier = nxt
    return None


def nested(descriptor: Descriptor, leaf: bytes, depth: int) -> bytes | None:
    """A `descriptor` message nested `depth` times in itself around `leaf`, or None if it cannot
    contain itself."""
    route = cycle(descriptor)
    if route is None:
        return None
    payload = leaf
    for _ in range(depth):
        payload = embed(route, payload)
    return payload
