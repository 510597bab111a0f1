"""EraseMember's messages as the erasure domain's values, and back."""

from __future__ import annotations

from memberops.tagging.v1 import tagging_service_pb2

from runtime.errors import InvalidArgument
from services.tagging.erasure import Erasure, ErasureRequest

MEMBER_NAME_PREFIX = "members/"


def erasure_request_from_proto(request: tagging_service_pb2.EraseMemberRequest) -> ErasureRequest:
    name = request.member
    if not name.startswith(MEMBER_NAME_PREFIX) or name == MEMBER_NAME_PREFIX:
        raise InvalidArgument.field("member", "must be a resource name of the form members/{member_id}")
    return ErasureRequest(
        member_id=name.removeprefix(MEMBER_NAME_PREFIX),
        request_id=request.request_id,
        operator=request.operator,
        reason=request.reason,
    )


def erasure_to_proto(erasure: Erasure) -> tagging_service_pb2.MemberErasure:
    message = tagging_service_pb2.MemberErasure(
        pseudonym=erasure.pseudonym, operator=erasure.operator, reason=erasure.reason
    )
    message.erase_time.FromDatetime(erasure.erase_time)
    return message
