"""The journey workflow's activities: the journeys schema, the three services over gRPC, the channels.

One instance per worker process, built on the gRPC channels the worker opened once for its event
loop; every call acts as the workflow's tenant with that tenant's token. The time an activity acts
at is the Temporal server's start time of the attempt (`activity.info().started_time`): the clock
the workflow's timers run on, so quiet hours and caps agree with the workflow's waits.
"""

from __future__ import annotations

import datetime as dt

import grpc
from memberops.audience.v1 import audience_service_pb2
from memberops.tagging.v1 import member_pb2, tagging_service_pb2
from memberops.tasks.v1 import points_pb2, tasks_service_pb2
from temporalio import activity
from temporalio.exceptions import ApplicationError

from runtime import logs, metrics
from runtime.buckets import bucket
from runtime.db import Database
from runtime.errors import NotFound
from workflows import service_calls
from workflows.journeys import coupons, local_time, states, store, templates
from workflows.journeys.channels.config import ChannelSettings
from workflows.journeys.definition import PROFILE_FIELDS
from workflows.journeys.payloads import (
    AwardRequest,
    ConditionRequest,
    Enrolment,
    EnrolRequest,
    Entered,
    EnterRequest,
    FinishRequest,
    IssueCouponRequest,
    IssuedCoupon,
    LoadedDefinition,
    LoadRequest,
    LocalTimeRequest,
    SendOutcome,
    SendRequest,
    SplitRequest,
    TagRequest,
)
from workflows.journeys.sending import Recipient, Sender, SendNotTaken

log = logs.get_logger("memberops.journeys.activities")

CHANNEL_NAMES = {
    member_pb2.CHANNEL_SMS: "sms",
    member_pb2.CHANNEL_EMAIL: "email",
    member_pb2.CHANNEL_APP_PUSH: "app_push",
    member_pb2.CHANNEL_WECOM: "wecom",
}


def now() -> dt.datetime:
    """The Temporal server's time at the start of this attempt."""
    return activity.info().started_time


def recipient_of(member: member_pb2.Member, extra_fields: dict[str, str] | None = None) -> Recipient:
    """What a send needs of a member from tagging: contact data, consent and personal fields."""
    profile, contact, member_id = member.profile, member.contact, member.member_id
    fields = dict(
        zip(PROFILE_FIELDS, (profile.nickname, profile.city, profile.level, member_id), strict=True)
    )
    if extra_fields:
        fields |= extra_fields
    opted_out = contact.opted_out_channels
    return Recipient(
        member_id=member_id,
        found=True,
        phone=contact.phone,
        email=contact.email,
        preferred_channel=CHANNEL_NAMES.get(contact.preferred_channel, ""),
        opted_out=frozenset(CHANNEL_NAMES[c] for c in opted_out if c in CHANNEL_NAMES)
        if opted_out
        else frozenset(),
        time_zone=contact.time_zone,
        fields=fields,
        wecom_external_userid=contact.wecom_external_userid,
        wecom_staff_userid=contact.wecom_staff_userid,
    )


def holdout_salt(journey_key: str) -> str:
    """Holdout buckets are per journey: a member is in the holdout of a journey on every entry."""
    return f"journey:{journey_key}"


class JourneyActivities(service_calls.ServiceActivities):
    def __init__(
        self,
        db: Database,
        services: service_calls.Services,
        sender: Sender,
        channel_settings: ChannelSettings,
    ) -> None:
        super().__init__(db, services)
        self._sender = sender
        self._settings = channel_settings

    def all(self) -> list[object]:
        """Every activity of this class, for the worker's registration."""
        return [
            self.enter,
            self.load_definition,
            self.enrol,
            self.local_time,
            self.check_condition,
            self.send,
            self.award,
            self.issue_coupon,
            self.add_tag,
            self.record_split,
            self.finish,
        ]

    def _auth(self, tenant_id: str) -> tuple[tuple[str, str], ...]:
        return service_calls.metadata(self._token_for_tenant, tenant_id)

    @activity.defn(name="journeys.load_definition")
    async def load_definition(self, request: LoadRequest) -> LoadedDefinition:
        """The version asked for; 0: the journey's live version (see `states.live_definition`)."""
        try:
            if request.version:
                stored = await store.get_definition(
                    self._db, request.tenant_id, request.journey_key, request.version
                )
            else:
                stored = await states.live_definition(self._db, request.tenant_id, request.journey_key)
        except NotFound as error:
            raise ApplicationError(error.message, type="NOT_FOUND", non_retryable=True) from error
        return LoadedDefinition(stored.version, stored.definition)

    @activity.defn(name="journeys.enter")
    async def enter(self, request: EnterRequest) -> Entered:
        """The definition version (0: the live one) and the member's enrolment, in one activity;
        only an active journey enrols (`store.enrol`)."""
        loaded = await self.load_definition(
            LoadRequest(request.tenant_id, request.journey_key, request.version)
        )
        enrolment = await self._enrol(
            request.tenant_id,
            store.StoredDefinition(loaded.version, loaded.definition),
            request.member_id,
            request.workflow_id,
            request.run_id,
            request.entry_event_id,
            request.entry_time,
        )
        return Entered(loaded.version, loaded.definition, enrolment)

    @activity.defn(name="journeys.enrol")
    async def enrol(self, request: EnrolRequest) -> Enrolment:
        """The enrolment of runs started before `journeys.enter` existed."""
        stored = await store.get_definition(self._db, request.tenant_id, request.journey_key, request.version)
        return await self._enrol(
            request.tenant_id,
            stored,
            request.member_id,
            request.workflow_id,
            request.run_id,
            request.entry_event_id,
        )

    async def _enrol(
        self,
        tenant_id: str,
        stored: store.StoredDefinition,
        member_id: str,
        workflow_id: str,
        run_id: str,
        entry_event_id: str,
        entry_time: dt.datetime | None = None,
    ) -> Enrolment:
        """Enrols the member as of when it entered: now, or when the entry fact happened if that
        was earlier (the dispatcher enrols late), for the enter time and the re-entry cooldown."""
        key = stored.definition.key
        at = now() if entry_time is None else min(now(), entry_time)
        holdout = bucket(holdout_salt(key), member_id) < stored.definition.holdout_percent * 100
        result = await store.enrol(
            self._db,
            tenant_id,
            stored.definition,
            stored.version,
            member_id,
            workflow_id,
            run_id,
            "holdout" if holdout else "treated",
            at,
            entry_event_id,
        )
        if isinstance(result, store.Refusal):
            return Enrolment(accepted=False, reason=result.reason)
        return Enrolment(
            accepted=True,
            enrolment_id=result.enrolment_id,
            entry_number=result.entry_number,
            holdout=result.arm == "holdout",
        )

    async def _member(self, tenant_id: str, member_id: str) -> member_pb2.Member | None:
        try:
            return await self._tagging.GetMember(
                tagging_service_pb2.GetMemberRequest(name=f"members/{member_id}"),
                metadata=self._auth(tenant_id),
                timeout=service_calls.CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise service_calls.permanent("GetMember", error) from error

    async def _tags(self, tenant_id: str, member_id: str) -> dict[str, list[str]]:
        try:
            reply = await self._tagging.GetMemberTags(
                tagging_service_pb2.GetMemberTagsRequest(member=f"members/{member_id}"),
                metadata=self._auth(tenant_id),
                timeout=service_calls.CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return {}
            raise service_calls.permanent("GetMemberTags", error) from error
        held: dict[str, list[str]] = {}
        for tag in reply.tags:
            held.setdefault(tag.dimension, []).append(tag.value)
        return held

    @activity.defn(name="journeys.local_time")
    async def local_time(self, request: LocalTimeRequest) -> dt.datetime:
        """The next instant at which the member's local clock shows hour:minute (with `preferred`,
        the hour of their `preferred_send_hour` tag when they have one)."""
        member = await self._member(request.tenant_id, request.member_id)
        zone_name = member.contact.time_zone if member is not None else ""
        tz = local_time.zone(zone_name, self._settings.default_time_zone)
        hour = request.hour
        if request.preferred and member is not None:
            held = await self._tags(request.tenant_id, request.member_id)
            own = local_time.preferred_hour(held.get(local_time.PREFERRED_SEND_HOUR, []))
            hour = local_time.hour_for(request.hour, own)
        return local_time.next_local_time(now(), tz, hour, request.minute)

    @activity.defn(name="journeys.check_condition")
    async def check_condition(self, request: ConditionRequest) -> bool:
        condition = request.condition
        if condition.tag is not None:
            held = (await self._tags(request.tenant_id, request.member_id)).get(condition.tag.dimension, [])
            return bool(held) and (not condition.tag.values or any(v in condition.tag.values for v in held))
        try:
            reply = await self._audience.CheckMembership(
                audience_service_pb2.CheckMembershipRequest(
                    audience=f"audiences/{condition.audience}", member=f"members/{request.member_id}"
                ),
                metadata=self._auth(request.tenant_id),
                timeout=service_calls.CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            raise service_calls.permanent("CheckMembership", error) from error
        return bool(reply.is_member)

    async def _recipient(self, request: SendRequest) -> Recipient:
        member = await self._member(request.tenant_id, request.member_id)
        if member is None:
            return Recipient(member_id=request.member_id, found=False)
        extra: dict[str, str] = {}
        if request.template.tag_fields:
            tags = await self._tags(request.tenant_id, request.member_id)
            extra = templates.tag_field_values(request.template, tags)
        if request.coupon is not None:
            tz = local_time.zone(member.contact.time_zone, self._settings.default_time_zone)
            extra |= coupons.field_values(request.coupon, tz)
        return recipient_of(member, extra)

    @activity.defn(name="journeys.send")
    async def send(self, request: SendRequest) -> SendOutcome:
        recipient = await self._recipient(request)
        try:
            outcome = await self._sender.send(request, recipient, now())
        except SendNotTaken as error:
            # Retried by Temporal's policy; the message log row says `retry`, so this is safe.
            raise ApplicationError(str(error), type="SendNotTaken") from error
        metrics.sent(request.tenant_id, request.journey_key, outcome.channel, outcome.status)
        return outcome

    @activity.defn(name="journeys.award")
    async def award(self, request: AwardRequest) -> int:
        """Earns the points once: the request id is the enrolment and step."""
        expiry = (
            points_pb2.EXPIRY_POLICY_ROLLING_DAYS
            if request.award.expiry_days
            else points_pb2.EXPIRY_POLICY_NEVER
        )
        try:
            entry = await self._tasks.EarnPoints(
                tasks_service_pb2.EarnPointsRequest(
                    member_id=request.member_id,
                    amount=request.award.points,
                    reason=points_pb2.REASON_TASK,
                    reference=f"journey:{request.journey_key}/{request.step_id}"[:128],
                    expiry_policy=expiry,
                    expiry_days=request.award.expiry_days,
                    request_id=f"journey:{request.enrolment_id}:{request.step_id}",
                ),
                metadata=self._auth(request.tenant_id),
                timeout=service_calls.CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            raise service_calls.permanent("EarnPoints", error) from error
        return int(entry.entry_id)

    @activity.defn(name="journeys.issue_coupon")
    async def issue_coupon(self, request: IssueCouponRequest) -> IssuedCoupon:
        """Issues the coupon once: the request id is the tenant, journey, enrolment and step, so a
        retried attempt gets the coupon the first one made. A refusal the member's coupon cannot
        outgrow (no stock, the member's limit, a retired or unknown template) is an answer, not
        an error: the journey counts it and goes on."""
        try:
            coupon = await self._tasks.IssueCoupon(
                coupons.issue_request(request),
                metadata=self._auth(request.tenant_id),
                timeout=service_calls.CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in coupons.REFUSALS:
                refused = f"{error.code().name}: {error.details()}"[:500]
                log.info("coupon refused", journey=request.journey_key, step=request.step_id, why=refused)
                return IssuedCoupon(refused=refused)
            raise service_calls.permanent("IssueCoupon", error) from error
        return coupons.issued(coupon)

    @activity.defn(name="journeys.add_tag")
    async def add_tag(self, request: TagRequest) -> int:
        """Sets a strategy tag value; a member already holding it is left alone."""
        try:
            reply = await self._tagging.AddMemberTags(
                tagging_service_pb2.AddMemberTagsRequest(
                    dimension=request.add_tag.dimension,
                    value=request.add_tag.value,
                    member_ids=[request.member_id],
                    operator=f"journey:{request.journey_key}"[:128],
                    reason=f"journey step {request.step_id}",
                ),
                metadata=self._auth(request.tenant_id),
                timeout=service_calls.CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            raise service_calls.permanent("AddMemberTags", error) from error
        return int(reply.changed_count)

    @activity.defn(name="journeys.record_split")
    async def record_split(self, request: SplitRequest) -> None:
        """Adds the arm to the enrolment's split arms (once however often it is retried)."""
        await store.record_split(self._db, request.tenant_id, request.enrolment_id, request.split_arm)

    @activity.defn(name="journeys.finish")
    async def finish(self, request: FinishRequest) -> None:
        await store.finish(
            self._db,
            request.tenant_id,
            request.enrolment_id,
            request.state,
            now(),
            request.convert_time,
            request.gmv_minor,
            store.Report(request.split_arms, request.step_figures),
        )
