"""Activities that call the tagging service through its gRPC stub, as the tenant they act for."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from memberops.tagging.v1 import member_pb2, tagging_service_pb2, tagging_service_pb2_grpc
from temporalio import activity
from temporalio.exceptions import ApplicationError

from workflows.member_lookup.shared import MemberLookupInput, MemberSummary

# Codes that retrying cannot fix; anything else (UNAVAILABLE, DEADLINE_EXCEEDED, ...) is retried.
_PERMANENT = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
}
CALL_TIMEOUT_SECONDS = 5.0


class TaggingActivities:
    def __init__(
        self, stub: tagging_service_pb2_grpc.TaggingServiceAsyncStub, token_for_tenant: Callable[[str], str]
    ) -> None:
        self._stub = stub
        self._token_for_tenant = token_for_tenant

    @activity.defn(name="tagging.get_member")
    async def get_member(self, request: MemberLookupInput) -> MemberSummary:
        metadata = (
            ("authorization", f"Bearer {self._token_for_tenant(request.tenant_id)}"),
            ("x-request-id", f"{activity.info().workflow_id}/{activity.info().activity_id}"),
        )
        try:
            member = await self._stub.GetMember(
                tagging_service_pb2.GetMemberRequest(name=f"members/{request.member_id}"),
                metadata=metadata,
                timeout=CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return MemberSummary(member_id=request.member_id, found=False)
            if error.code() in _PERMANENT:
                raise ApplicationError(
                    f"GetMember: {error.code().name}: {error.details()}",
                    type=error.code().name,
                    non_retryable=True,
                ) from error
            raise
        return MemberSummary(
            member_id=member.member_id,
            found=True,
            city=member.profile.city,
            city_tier=member_pb2.CityTier.Name(member.profile.city_tier),
            register_channel=member.profile.register_channel,
            revision=member.revision,
        )
