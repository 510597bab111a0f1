"""The history rebuild's one activity: tagging's RecomputeTags for one dimension as of one instant.

Retrying it is safe: a recompute as of t writes only what differs from the history it finds, so a
step that ran before its worker died changes nothing the second time.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from memberops.tagging.v1 import tagging_service_pb2
from temporalio import activity

from workflows import service_calls
from workflows.periodic.activities import LONG_CALL_SECONDS, completed
from workflows.tag_history.payloads import RECOMPUTE_AT, RecomputeAt, Recomputed


class TagHistoryActivities:
    def __init__(self, tagging: Any, token_for_tenant: service_calls.TokenForTenant) -> None:
        self._tagging = tagging
        self._token_for_tenant = token_for_tenant

    def all(self) -> list[object]:
        return [self.recompute_at]

    @activity.defn(name=RECOMPUTE_AT)
    async def recompute_at(self, step: RecomputeAt) -> Recomputed:
        as_of = Timestamp()
        as_of.FromDatetime(step.as_of)
        call = self._tagging.RecomputeTags(
            tagging_service_pb2.RecomputeTagsRequest(dimensions=[step.dimension], as_of=as_of),
            metadata=service_calls.metadata(self._token_for_tenant, step.tenant_id),
            timeout=LONG_CALL_SECONDS,
        )
        reply = await completed("RecomputeTags", call)
        return Recomputed(
            added=sum(r.added_count for r in reply.results),
            removed=sum(r.removed_count for r in reply.results),
        )
