"""What no request may carry, refused once at the gRPC layer for every RPC: bytes that do not
decode, a NUL in any text, a number that is not finite. Each is INVALID_ARGUMENT naming the
field, with a BadRequest detail and no internals, and nothing is written."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import struct_pb2
from memberops.tagging.v1 import member_pb2, tagging_service_pb2

from runtime import inbound
from runtime.errors import InvalidArgument
from tests.conftest import ACME, unique
from tests.grpc_helpers import failure, field_violations

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub

UPSERT = "/memberops.tagging.v1.TaggingService/UpsertMember"


def _member(member_id: str, **profile: Any) -> member_pb2.Member:
    return member_pb2.Member(member_id=member_id, profile=member_pb2.Profile(**profile))


async def _assert_refused(call: Any, field: str, words: str) -> None:
    error = await failure(call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    violations = field_violations(error)
    assert field in violations, violations
    assert words in violations[field]
    assert "DecodeError" not in (error.details() or "")


async def _absent(stub: Stub, member_id: str) -> None:
    error = await failure(
        stub.GetMember(tagging_service_pb2.GetMemberRequest(name=f"members/{member_id}"), metadata=ACME)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_a_nul_in_any_text_is_refused_naming_the_field_and_nothing_is_written(
    tagging_stub: Stub,
) -> None:
    member_id = unique()
    call = tagging_stub.UpsertMember(
        tagging_service_pb2.UpsertMemberRequest(member=_member(member_id, nickname="Li\x00Lei")),
        metadata=ACME,
    )
    await _assert_refused(call, "member.profile.nickname", "NUL")
    await _absent(tagging_stub, member_id)


@pytest.mark.parametrize(
    ("attributes", "field", "words"),
    [
        ({"size": math.nan}, "member.attributes.size", "finite"),
        ({"size": math.inf}, "member.attributes.size", "finite"),
        ({"list": [1, -math.inf]}, "member.attributes.list[1]", "finite"),
        ({"deep": {"note": "a\x00b"}}, "member.attributes.deep.note", "NUL"),
        ({"k\x00": 1}, "member.attributes", "key"),
    ],
)
async def test_struct_values_are_checked_where_json_names_them(
    tagging_stub: Stub, attributes: dict[str, Any], field: str, words: str
) -> None:
    member_id = unique()
    member = _member(member_id)
    member.attributes.update(attributes)
    call = tagging_stub.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=member), metadata=ACME)
    await _assert_refused(call, field, words)
    await _absent(tagging_stub, member_id)


def _length_delimited(field: int, body: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(body)) + body


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _nested_struct(depth: int) -> bytes:
    """A Struct {"a": {"a": … }} `depth` levels deep, encoded by hand: past protobuf's limit."""
    struct = b""
    for _ in range(depth):
        value = _length_delimited(5, struct)  # Value.struct_value
        entry = _length_delimited(1, b"a") + _length_delimited(2, value)  # map entry key, value
        struct = _length_delimited(1, entry)  # Struct.fields
    return struct


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\xff\xff\xff", id="corrupt"),
        pytest.param(_length_delimited(1, _length_delimited(2, b"m-\xff\xfe")), id="invalid-utf8"),
        pytest.param(_length_delimited(1, _length_delimited(4, _nested_struct(200))), id="nested-200"),
        pytest.param(_length_delimited(1, b"\x12\x05ab"), id="truncated"),
    ],
)
async def test_undecodable_requests_are_invalid_argument_without_internals(
    tagging_channel: grpc.aio.Channel, body: bytes
) -> None:
    call: Any = tagging_channel.unary_unary(UPSERT, request_serializer=None, response_deserializer=None)
    error = await failure(call(body, metadata=ACME))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "request" in field_violations(error)
    assert "class" not in (error.details() or "")


async def test_a_refused_message_of_a_stream_is_named_by_its_place_and_earlier_batches_stay(
    tagging_stub: Stub,
) -> None:
    first, second = unique(), unique()

    async def batches() -> AsyncIterator[tagging_service_pb2.ImportMembersRequest]:
        yield tagging_service_pb2.ImportMembersRequest(members=[_member(first)])
        yield tagging_service_pb2.ImportMembersRequest(members=[_member(second, city="Hang\x00zhou")])

    await _assert_refused(
        tagging_stub.ImportMembers(batches(), metadata=ACME), "requests[1].members[0].profile.city", "NUL"
    )
    got = await tagging_stub.GetMember(
        tagging_service_pb2.GetMemberRequest(name=f"members/{first}"), metadata=ACME
    )
    assert got.member_id == first
    await _absent(tagging_stub, second)


def test_a_request_without_a_zero_byte_is_not_walked_and_one_with_zero_values_passes() -> None:
    """The walk is skipped when no zero byte is on the wire; when one is (an empty message, a
    double), a request with nothing wrong still decodes to itself."""
    decode = inbound.guarded(tagging_service_pb2.UpsertMemberRequest.FromString)
    assert decode is not None
    member = _member("m-1", city="Hangzhou")
    member.attributes.update({"children": 2.0})
    request = tagging_service_pb2.UpsertMemberRequest(member=member)
    data = request.SerializeToString()
    assert b"\x00" in data
    assert inbound.admit(decode(data)) == request


def test_violations_are_listed_up_to_a_bound() -> None:
    decode = inbound.guarded(struct_pb2.ListValue.FromString)
    assert decode is not None
    many = struct_pb2.ListValue()
    many.extend([math.nan] * 1000)
    with pytest.raises(InvalidArgument) as caught:
        inbound.admit(decode(many.SerializeToString()))
    assert 1 <= len(caught.value.violations) <= 20
