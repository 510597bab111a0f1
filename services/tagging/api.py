"""TaggingService over gRPC: protobuf in, domain calls, protobuf out.

Domain errors propagate to the shared interceptor, which turns them into status codes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import google.type.date_pb2 as date_pb2
from google.protobuf import json_format, struct_pb2, timestamp_pb2
from memberops.tagging.v1 import member_pb2, tagging_service_pb2, tagging_service_pb2_grpc

from services.common.auth import current_tenant
from services.common.errors import InvalidArgument, Violations
from services.tagging.members import Members
from services.tagging.model import Member, MemberInput, Profile

MEMBER_NAME_PREFIX = "members/"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class TaggingApi(tagging_service_pb2_grpc.TaggingServiceServicer):
    def __init__(self, members: Members, clock: Callable[[], dt.datetime] = utc_now) -> None:
        self._members = members
        self._clock = clock

    async def UpsertMember(
        self, request: tagging_service_pb2.UpsertMemberRequest, context: Any
    ) -> member_pb2.Member:
        if not request.HasField("member"):
            raise InvalidArgument.field("member", "is required")
        stored = await self._members.upsert(
            current_tenant(), member_from_proto(request.member), self._clock()
        )
        return member_to_proto(stored)

    async def GetMember(
        self, request: tagging_service_pb2.GetMemberRequest, context: Any
    ) -> member_pb2.Member:
        found = await self._members.get(current_tenant(), member_id_from_name(request.name, "name"))
        return member_to_proto(found)


def member_id_from_name(name: str, field: str) -> str:
    if not name.startswith(MEMBER_NAME_PREFIX) or len(name) == len(MEMBER_NAME_PREFIX):
        raise InvalidArgument.field(field, "must be a resource name of the form members/{member_id}")
    return name.removeprefix(MEMBER_NAME_PREFIX)


def member_from_proto(message: member_pb2.Member) -> MemberInput:
    violations = Violations()
    p = message.profile
    birthday = _date(p.birthday, violations, "member.profile.birthday") if p.HasField("birthday") else None
    register_time = (
        _timestamp(p.register_time, violations, "member.profile.register_time")
        if p.HasField("register_time")
        else None
    )
    violations.raise_if_any()
    return MemberInput(
        member_id=message.member_id,
        profile=Profile(
            gender=p.gender,
            birthday=birthday,
            city=p.city,
            city_tier=p.city_tier,
            register_time=register_time,
            register_channel=p.register_channel,
        ),
        attributes=json_format.MessageToDict(message.attributes),
    )


def member_to_proto(member: Member) -> member_pb2.Member:
    p = member.profile
    profile = member_pb2.Profile(
        gender=p.gender,  # type: ignore[arg-type]
        city=p.city,
        city_tier=p.city_tier,  # type: ignore[arg-type]
        register_channel=p.register_channel,
    )
    if p.birthday is not None:
        profile.birthday.CopyFrom(
            date_pb2.Date(year=p.birthday.year, month=p.birthday.month, day=p.birthday.day)
        )
    if p.register_time is not None:
        profile.register_time.FromDatetime(p.register_time)
    attributes = struct_pb2.Struct()
    attributes.update(member.attributes)
    result = member_pb2.Member(
        name=MEMBER_NAME_PREFIX + member.member_id,
        member_id=member.member_id,
        profile=profile,
        attributes=attributes,
        revision=member.revision,
    )
    result.create_time.FromDatetime(member.create_time)
    result.update_time.FromDatetime(member.update_time)
    return result


def _date(value: date_pb2.Date, violations: Violations, field: str) -> dt.date | None:
    try:
        return dt.date(value.year, value.month, value.day)
    except ValueError:
        violations.add(field, "must be a full, valid calendar date (year, month and day)")
        return None


def _timestamp(value: timestamp_pb2.Timestamp, violations: Violations, field: str) -> dt.datetime | None:
    try:
        return value.ToDatetime(tzinfo=dt.UTC)
    except (ValueError, OverflowError):
        violations.add(field, "is not a valid timestamp")
        return None
