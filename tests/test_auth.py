"""Every call needs a bearer token that names a tenant; probes and reflection do not."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2
from memberops.tagging.v1 import tagging_service_pb2, tagging_service_pb2_grpc

from runtime.auth import TokenAuthenticator
from runtime.errors import Unauthenticated
from tests.conftest import TOKEN_ACME
from tests.grpc_helpers import health_stub

GET = tagging_service_pb2.GetMemberRequest(name="members/anyone")


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", ""),),
        (("authorization", "Bearer"),),
        (("authorization", "Bearer    "),),
        (("authorization", f"Basic {TOKEN_ACME}"),),
        (("authorization", TOKEN_ACME),),
        (("authorization", "Bearer not-a-known-token-at-all"),),
        (("authorization", f"Bearer {TOKEN_ACME}x"),),
    ],
    ids=["none", "empty", "no-token", "blank-token", "basic", "no-scheme", "unknown", "suffixed"],
)
async def test_calls_without_a_valid_bearer_token_are_unauthenticated(
    tagging_channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]
) -> None:
    stub = tagging_service_pb2_grpc.TaggingServiceStub(tagging_channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetMember(GET, metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_health_needs_no_token(tagging_channel: grpc.aio.Channel) -> None:
    reply = await health_stub(tagging_channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_scheme_is_case_insensitive_and_token_exact() -> None:
    auth = TokenAuthenticator({TOKEN_ACME: "acme"})
    assert auth.tenant_for(f"bearer {TOKEN_ACME}") == "acme"
    with pytest.raises(Unauthenticated):
        auth.tenant_for(f"Bearer {TOKEN_ACME.upper()}")
