"""JourneyService over gRPC: protobuf in, domain calls, protobuf out.

Domain errors propagate to the shared interceptor, which turns them into status codes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from google.protobuf import timestamp_pb2
from memberops.journeys.v1 import (
    journey_pb2,
    journeys_service_pb2,
    journeys_service_pb2_grpc,
    report_pb2,
    wecom_pb2,
)

from runtime.auth import current_tenant
from runtime.db import Database
from runtime.errors import FieldViolation, InvalidArgument
from services.audience.evaluation import member_id_from_name
from services.journeys import anomalies, convert, member_journeys, report_messages, send_days
from services.journeys.erasure import Erasures
from services.journeys.journey_store import JourneyRow
from services.journeys.journeys import FIELD, Journeys, key_from_name
from services.journeys.operations import Operations
from services.journeys.wecom_messages import WeComRpcs

State = journey_pb2.JourneyState
_STATES = {
    "draft": State.JOURNEY_STATE_DRAFT,
    "active": State.JOURNEY_STATE_ACTIVE,
    "paused": State.JOURNEY_STATE_PAUSED,
    "archived": State.JOURNEY_STATE_ARCHIVED,
}
Kind = journeys_service_pb2.FindingKind


def _stamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def journey_to_proto(row: JourneyRow) -> journey_pb2.Journey:
    message = journey_pb2.Journey(
        name=f"journeys/{row.key}",
        definition=convert.to_proto(row.definition),
        version=row.version,
        latest_version=row.latest_version,
        state=_STATES[row.state],
        live_version=row.live_version,
        create_time=_stamp(row.create_time),
    )
    if row.state_time is not None:
        message.state_time.CopyFrom(_stamp(row.state_time))
    return message


def state_from_proto(state: int) -> str:
    """'' for every state."""
    if state == State.JOURNEY_STATE_UNSPECIFIED:
        return ""
    for name, value in _STATES.items():
        if value == state:
            return name
    raise InvalidArgument.field("state", "must be one of DRAFT, ACTIVE, PAUSED, ARCHIVED or unspecified")


def _required(request: Any) -> journey_pb2.JourneyDefinition:
    if not request.HasField(FIELD):
        raise InvalidArgument.field(FIELD, "is required")
    definition: journey_pb2.JourneyDefinition = request.journey
    return definition


def _findings(
    violations: list[FieldViolation], kind: journeys_service_pb2.FindingKind.ValueType
) -> list[journeys_service_pb2.Finding]:
    return [
        journeys_service_pb2.Finding(field=v.field, description=v.description, kind=kind) for v in violations
    ]


class JourneyApi(journeys_service_pb2_grpc.JourneyServiceServicer):
    def __init__(
        self,
        db: Database,
        journeys: Journeys,
        operations: Operations,
        *,
        erasures: Erasures,
        coupons: report_messages.CouponStats,
        wecom: WeComRpcs,
    ) -> None:
        self._wecom = wecom
        self._erasures = erasures
        self._coupons = coupons
        self._db = db
        self._journeys = journeys
        self._operations = operations

    async def ValidateJourney(
        self, request: journeys_service_pb2.ValidateJourneyRequest, context: Any
    ) -> journeys_service_pb2.ValidateJourneyResponse:
        message = _required(request)
        sample = member_id_from_name(request.sample_member, "sample_member") if request.sample_member else ""
        try:
            definition = convert.checked(message)
        except InvalidArgument as error:
            return journeys_service_pb2.ValidateJourneyResponse(
                valid=False, findings=_findings(list(error.violations), Kind.FINDING_KIND_SHAPE)
            )
        found = await self._journeys.validate(current_tenant(), definition, sample)
        return journeys_service_pb2.ValidateJourneyResponse(
            valid=not found.references,
            findings=_findings(found.references, Kind.FINDING_KIND_REFERENCE),
            rendered=[
                journeys_service_pb2.RenderedTemplate(template=r.template, subject=r.subject, body=r.body)
                for r in found.rendered
            ],
        )

    async def CreateJourney(
        self, request: journeys_service_pb2.CreateJourneyRequest, context: Any
    ) -> journey_pb2.Journey:
        definition = convert.checked(_required(request))
        created = await self._journeys.create(current_tenant(), definition, request.request_id)
        return journey_to_proto(created)

    async def UpdateJourney(
        self, request: journeys_service_pb2.UpdateJourneyRequest, context: Any
    ) -> journey_pb2.Journey:
        definition = convert.checked(_required(request))
        updated = await self._journeys.update(
            current_tenant(), definition, request.expected_version, request.request_id
        )
        return journey_to_proto(updated)

    async def GetJourney(
        self, request: journeys_service_pb2.GetJourneyRequest, context: Any
    ) -> journey_pb2.Journey:
        key = key_from_name(request.name)
        return journey_to_proto(await self._journeys.get(current_tenant(), key, request.version))

    async def ListJourneys(
        self, request: journeys_service_pb2.ListJourneysRequest, context: Any
    ) -> journeys_service_pb2.ListJourneysResponse:
        state = state_from_proto(request.state)
        page, token = await self._journeys.list_page(
            current_tenant(), state, request.page_size, request.page_token
        )
        return journeys_service_pb2.ListJourneysResponse(
            journeys=[journey_to_proto(row) for row in page], next_page_token=token
        )

    async def ActivateJourney(
        self, request: journeys_service_pb2.ActivateJourneyRequest, context: Any
    ) -> journey_pb2.Journey:
        key = key_from_name(request.name)
        activated = await self._operations.activate(
            current_tenant(), key, request.version, request.request_id
        )
        return journey_to_proto(activated)

    async def PauseJourney(
        self, request: journeys_service_pb2.PauseJourneyRequest, context: Any
    ) -> journey_pb2.Journey:
        key = key_from_name(request.name)
        return journey_to_proto(await self._operations.pause(current_tenant(), key, request.request_id))

    async def ResumeJourney(
        self, request: journeys_service_pb2.ResumeJourneyRequest, context: Any
    ) -> journey_pb2.Journey:
        key = key_from_name(request.name)
        return journey_to_proto(await self._operations.resume(current_tenant(), key, request.request_id))

    async def ArchiveJourney(
        self, request: journeys_service_pb2.ArchiveJourneyRequest, context: Any
    ) -> journey_pb2.Journey:
        key = key_from_name(request.name)
        archived = await self._operations.archive(
            current_tenant(), key, request.stop_running, request.request_id
        )
        return journey_to_proto(archived)

    async def StartBroadcast(
        self, request: journeys_service_pb2.StartBroadcastRequest, context: Any
    ) -> journeys_service_pb2.StartBroadcastResponse:
        key = key_from_name(request.name)
        started, version = await self._operations.start_broadcast(current_tenant(), key, request.request_id)
        return journeys_service_pb2.StartBroadcastResponse(
            workflow_id=started.workflow_id, run_id=started.run_id, version=version
        )

    async def GetJourneyReport(
        self, request: report_pb2.GetJourneyReportRequest, context: Any
    ) -> report_pb2.JourneyReport:
        return await report_messages.answer(self._db, current_tenant(), request, self._coupons)

    async def ListMemberJourneys(
        self, request: journeys_service_pb2.ListMemberJourneysRequest, context: Any
    ) -> journeys_service_pb2.ListMemberJourneysResponse:
        return await member_journeys.answer(self._db, current_tenant(), request)

    async def GetDailySends(
        self, request: journeys_service_pb2.GetDailySendsRequest, context: Any
    ) -> journeys_service_pb2.GetDailySendsResponse:
        return await send_days.answer(self._db, current_tenant(), request)

    async def ListAnomalies(
        self, request: journeys_service_pb2.ListAnomaliesRequest, context: Any
    ) -> journeys_service_pb2.ListAnomaliesResponse:
        return await anomalies.answer(self._db, current_tenant(), request, anomalies.utc_now)

    async def EraseMemberData(
        self, request: journeys_service_pb2.EraseMemberDataRequest, context: Any
    ) -> journeys_service_pb2.EraseMemberDataResponse:
        changed = await self._erasures.erase(current_tenant(), request.member_id, request.pseudonym)
        return journeys_service_pb2.EraseMemberDataResponse(changed_rows=changed)

    async def PutWeComConnector(
        self, request: wecom_pb2.PutWeComConnectorRequest, context: Any
    ) -> wecom_pb2.WeComConnector:
        return await self._wecom.put(request, context)

    async def GetWeComConnector(
        self, request: wecom_pb2.GetWeComConnectorRequest, context: Any
    ) -> wecom_pb2.WeComConnector:
        return await self._wecom.get(request, context)

    async def ResyncWeCom(self, request: wecom_pb2.ResyncWeComRequest, context: Any) -> wecom_pb2.WeComSync:
        return await self._wecom.resync(request, context)

    async def GetWeComSync(self, request: wecom_pb2.GetWeComSyncRequest, context: Any) -> wecom_pb2.WeComSync:
        return await self._wecom.sync(request, context)
