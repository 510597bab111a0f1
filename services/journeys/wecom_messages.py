"""The WeCom RPCs' protobuf in and out (memberops/journeys/v1/wecom.proto): the connector's input
(output-only fields ignored), the stored connector without its secrets, the sync's state."""

from __future__ import annotations

import datetime as dt
from typing import Any

from google.protobuf import timestamp_pb2
from memberops.journeys.v1 import wecom_pb2

from runtime.auth import current_tenant
from runtime.errors import InvalidArgument
from services.journeys.wecom import FIELD, ConnectorInput, WeComConnectors, callback_path
from workflows.wecom.connector_store import Connector
from workflows.wecom.sync_store import SyncState


def _stamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def connector_input(request: wecom_pb2.PutWeComConnectorRequest) -> ConnectorInput:
    if not request.HasField("connector"):
        raise InvalidArgument.field(FIELD, "is required")
    given = request.connector
    return ConnectorInput(
        corp_id=given.corp_id,
        secret=given.secret,
        callback_token=given.callback_token,
        encoding_aes_key=given.encoding_aes_key,
        push_dimensions=tuple(given.push_dimensions),
        pull_dimensions=tuple(given.pull_dimensions),
        enabled=given.enabled,
    )


def connector_to_proto(tenant_id: str, stored: Connector) -> wecom_pb2.WeComConnector:
    """The stored connector; the secret and the EncodingAESKey only as `*_set`."""
    message = wecom_pb2.WeComConnector(
        name="wecom/connector",
        corp_id=stored.corp_id,
        secret_set=bool(stored.secret),
        callback_token=stored.callback_token,
        encoding_aes_key_set=bool(stored.encoding_aes_key),
        push_dimensions=stored.push_dimensions,
        pull_dimensions=stored.pull_dimensions,
        enabled=stored.enabled,
        version=stored.version,
        callback_path=callback_path(tenant_id),
    )
    if stored.update_time is not None:
        message.update_time.CopyFrom(_stamp(stored.update_time))
    return message


def sync_to_proto(state: SyncState) -> wecom_pb2.WeComSync:
    message = wecom_pb2.WeComSync(
        cursor=state.cursor,
        members_marked=state.members_marked,
        tags_pulled=state.tags_pulled,
        callbacks_received=state.callbacks_received,
        callbacks_refused=state.callbacks_refused,
        last_error=state.last_error,
    )
    if state.last_push_time is not None:
        message.last_push_time.CopyFrom(_stamp(state.last_push_time))
    if state.resync_request_id:
        reconciliation = message.reconciliation
        reconciliation.request_id = state.resync_request_id
        reconciliation.state = state.resync_state
        reconciliation.members_checked = state.resync_checked
        reconciliation.members_repaired = state.resync_repaired
        if state.resync_start is not None:
            reconciliation.start_time.CopyFrom(_stamp(state.resync_start))
        if state.resync_end is not None:
            reconciliation.end_time.CopyFrom(_stamp(state.resync_end))
    return message


class WeComRpcs:
    """The four RPCs, for JourneyApi to delegate to."""

    def __init__(self, connectors: WeComConnectors) -> None:
        self._connectors = connectors

    async def put(
        self, request: wecom_pb2.PutWeComConnectorRequest, context: Any
    ) -> wecom_pb2.WeComConnector:
        tenant_id = current_tenant()
        stored = await self._connectors.put(tenant_id, connector_input(request), request.expected_version)
        return connector_to_proto(tenant_id, stored)

    async def get(
        self, request: wecom_pb2.GetWeComConnectorRequest, context: Any
    ) -> wecom_pb2.WeComConnector:
        tenant_id = current_tenant()
        return connector_to_proto(tenant_id, await self._connectors.get(tenant_id))

    async def resync(self, request: wecom_pb2.ResyncWeComRequest, context: Any) -> wecom_pb2.WeComSync:
        return sync_to_proto(await self._connectors.resync(current_tenant(), request.request_id))

    async def sync(self, request: wecom_pb2.GetWeComSyncRequest, context: Any) -> wecom_pb2.WeComSync:
        return sync_to_proto(await self._connectors.sync(current_tenant()))
