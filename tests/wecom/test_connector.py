"""PutWeComConnector, GetWeComConnector, ResyncWeCom and GetWeComSync over gRPC: each bad field
named, dimensions checked against tagging, secrets stored but never answered, versions, and a
reconciliation's request id. (What the sync does is tests/wecom/test_push.py's.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from memberops.journeys.v1 import journeys_service_pb2_grpc, wecom_pb2

from runtime import app
from runtime.db import Database
from tests.audience.helpers import manual_dimension
from tests.conftest import UMBRELLA, WECOM_PUSH, unique
from tests.grpc_helpers import bad, failure
from tests.wecom.conftest import AES_KEY
from workflows.wecom import connector_store

if TYPE_CHECKING:
    from memberops.journeys.v1.journeys_service_pb2_grpc import JourneyServiceAsyncStub as JourneysStub


@pytest.fixture(scope="module")
async def stub(journeys: app.RunningService) -> AsyncIterator[JourneysStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{journeys.port}") as channel:
        yield journeys_service_pb2_grpc.JourneyServiceStub(channel)


@pytest.fixture(scope="module")
async def dimension(tagging_stub: Any) -> str:
    return await manual_dimension(tagging_stub, ["gold", "silver"], metadata=WECOM_PUSH)


def connector(dimension: str, **changes: Any) -> wecom_pb2.WeComConnector:
    fields: dict[str, Any] = {
        "corp_id": "ww0123456789abcdef",
        "secret": "the-secret-" + unique("s"),
        "callback_token": "Token0123",
        "encoding_aes_key": AES_KEY,
        "push_dimensions": [dimension],
        "pull_dimensions": [dimension],
        "enabled": False,
        **changes,
    }
    return wecom_pb2.WeComConnector(**fields)


async def put(
    stub: JourneysStub, given: wecom_pb2.WeComConnector, expected: int = 0
) -> wecom_pb2.WeComConnector:
    request = wecom_pb2.PutWeComConnectorRequest(connector=given, expected_version=expected)
    answer: wecom_pb2.WeComConnector = await stub.PutWeComConnector(request, metadata=WECOM_PUSH)
    return answer


@pytest.mark.parametrize(
    ("changes", "path", "words"),
    [
        ({"corp_id": ""}, "connector.corp_id", "required"),
        ({"corp_id": "ww-0123"}, "connector.corp_id", "[A-Za-z0-9]"),
        ({"secret": "x" * 129}, "connector.secret", "128"),
        ({"callback_token": "x" * 33}, "connector.callback_token", "1-32"),
        ({"encoding_aes_key": AES_KEY[:42]}, "connector.encoding_aes_key", "43"),
        ({"push_dimensions": ["Not A Name"]}, "connector.push_dimensions[0]", "dimension name"),
        ({"push_dimensions": ["no_such_dimension_x"]}, "connector.push_dimensions[0]", "no dimension"),
        ({"pull_dimensions": ["gender"]}, "connector.pull_dimensions[0]", "not MANUAL"),
        ({"push_dimensions": [f"d{i}" for i in range(21)]}, "connector.push_dimensions", "at most 20"),
    ],
)
async def test_a_bad_connector_names_its_field(
    stub: JourneysStub, dimension: str, changes: dict[str, Any], path: str, words: str
) -> None:
    await bad(put(stub, connector(dimension, **changes)), path, words)


async def test_a_repeated_dimension_is_named(stub: JourneysStub, dimension: str) -> None:
    given = connector(dimension, push_dimensions=[dimension, dimension])
    await bad(put(stub, given), "connector.push_dimensions[1]", "repeats")


async def test_no_connector_is_invalid_and_none_stored_is_not_found(stub: JourneysStub) -> None:
    await bad(stub.PutWeComConnector(wecom_pb2.PutWeComConnectorRequest(), metadata=WECOM_PUSH), "connector")
    for call in (
        stub.GetWeComConnector(wecom_pb2.GetWeComConnectorRequest(), metadata=UMBRELLA),
        stub.GetWeComSync(wecom_pb2.GetWeComSyncRequest(), metadata=UMBRELLA),
    ):
        assert (await failure(call)).code() == grpc.StatusCode.NOT_FOUND
    resync = stub.ResyncWeCom(wecom_pb2.ResyncWeComRequest(request_id=unique("r")), metadata=UMBRELLA)
    assert (await failure(resync)).code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_secrets_are_kept_never_answered_and_versions_follow_changes(
    stub: JourneysStub, dimension: str, db: Database
) -> None:
    first = connector(dimension)
    stored = await put(stub, first)
    version = stored.version
    assert (stored.secret, stored.encoding_aes_key) == ("", "")
    assert stored.secret_set and stored.encoding_aes_key_set
    assert stored.callback_path == "/wecom/callback/wecompush"
    assert list(stored.push_dimensions) == [dimension]
    # The same again changes nothing; leaving the secrets out keeps them.
    again = connector(dimension, secret=first.secret)
    assert (await put(stub, again)).version == version
    kept = connector(dimension, secret="", encoding_aes_key="")
    assert (await put(stub, kept)).version == version
    fetched = await stub.GetWeComConnector(wecom_pb2.GetWeComConnectorRequest(), metadata=WECOM_PUSH)
    assert fetched == stored
    # A change is the next version, at the version expected; another expected version is ABORTED.
    changed = await put(stub, connector(dimension, secret="", encoding_aes_key="", enabled=True), version)
    assert changed.version == version + 1 and changed.enabled
    stale = put(stub, connector(dimension, callback_token="Other0"), version)
    assert (await failure(stale)).code() == grpc.StatusCode.ABORTED
    async with db.transaction("wecompush", readonly=True) as conn:
        row = await connector_store.get(conn)
    assert row is not None and row.secret == first.secret and row.callback_token == "Token0123"
    assert first.secret not in repr(row)


async def test_a_reconciliation_answers_its_request_id_again(stub: JourneysStub, dimension: str) -> None:
    await put(stub, connector(dimension, enabled=True, secret="", encoding_aes_key=""))
    await bad(stub.ResyncWeCom(wecom_pb2.ResyncWeComRequest(), metadata=WECOM_PUSH), "request_id")
    request_id = unique("resync")
    first = await stub.ResyncWeCom(wecom_pb2.ResyncWeComRequest(request_id=request_id), metadata=WECOM_PUSH)
    assert first.reconciliation.request_id == request_id
    assert first.reconciliation.state == "running"
    again = await stub.ResyncWeCom(wecom_pb2.ResyncWeComRequest(request_id=request_id), metadata=WECOM_PUSH)
    assert again.reconciliation.start_time == first.reconciliation.start_time
    sync = await stub.GetWeComSync(wecom_pb2.GetWeComSyncRequest(), metadata=WECOM_PUSH)
    assert sync.reconciliation.request_id == request_id
    off = connector(dimension, enabled=False, secret="", encoding_aes_key="")
    await put(stub, off)
    refused = stub.ResyncWeCom(wecom_pb2.ResyncWeComRequest(request_id=unique("r")), metadata=WECOM_PUSH)
    assert (await failure(refused)).code() == grpc.StatusCode.FAILED_PRECONDITION
