"""Activities that call the tagging service through its gRPC stub, as the tenant they act for."""

from __future__ import annotations

import grpc
from memberops.tagging.v1 import member_pb2, tagging_service_pb2, tagging_service_pb2_grpc
from temporalio import activity

from workflows import service_calls
from workflows.member_lookup.payloads import MemberLookupInput, MemberSummary


class TaggingActivities:
    def __init__(
        self,
        stub: tagging_service_pb2_grpc.TaggingServiceAsyncStub,
        token_for_tenant: service_calls.TokenForTenant,
    ) -> None:
        self._stub = stub
        self._token_for_tenant = token_for_tenant

    @activity.defn(name="tagging.get_member")
    async def get_member(self, request: MemberLookupInput) -> MemberSummary:
        try:
            member = await self._stub.GetMember(
                tagging_service_pb2.GetMemberRequest(name=f"members/{request.member_id}"),
                metadata=service_calls.metadata(self._token_for_tenant, request.tenant_id),
                timeout=service_calls.CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return MemberSummary(member_id=request.member_id, found=False)
            raise service_calls.permanent("GetMember", error) from error
        return MemberSummary(
            member_id=member.member_id,
            found=True,
            city=member.profile.city,
            city_tier=member_pb2.CityTier.Name(member.profile.city_tier),
            register_channel=member.profile.register_channel,
            revision=member.revision,
            wecom_external_userid=member.contact.wecom_external_userid,
            wecom_staff_userid=member.contact.wecom_staff_userid,
        )
