"""One send of one journey step to one member: the checks made at send time, then the message log,
then the provider.

In order: a final row in the message log answers at once (a retry of a send that already ended);
quiet hours in the member's zone defer the send to their end; the channel is the first of the
step's choice and the journey's fallback order that the member has not opted out of, has an address
for and that is configured; the member's daily cap (their local day, across all journeys) defers to
their next local midnight; the channel's per-minute window defers to the next minute. A template
showing coupon fields is skipped for a member the journey issued no coupon (refused, or a path
past the issue_coupon step). Deferred sends are never dropped: the workflow sleeps until the time
given and asks again. Only then is the message rendered, the row claimed and committed with that
text, and the provider called with it.

`now` is the Temporal server's start time of the activity attempt, the clock the workflow's timers
run on (under the time-skipping test server too), not this machine's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from runtime import logs, metrics
from runtime.db import Connection, Database
from workflows.journeys import local_time, message_log, templates
from workflows.journeys.channels.base import (
    Channel,
    NotDelivered,
    OutcomeUnknown,
    Outgoing,
    Rejected,
    TenantChannel,
)
from workflows.journeys.channels.config import ChannelSettings
from workflows.journeys.definition import CHANNELS, ChannelPolicy, QuietHours, Template, coupon_fields_used
from workflows.journeys.message_log import Key
from workflows.journeys.payloads import SendOutcome, SendRequest

log = logs.get_logger("memberops.journeys.sending")


class SendNotTaken(Exception):
    """The provider certainly did not take the message; the row says `retry` and the activity is
    retried (Temporal's backoff) without any risk of a second delivery."""


@dataclass(frozen=True)
class Recipient:
    """What tagging says about the member at send time (never logged: it holds contact data)."""

    member_id: str
    found: bool
    phone: str = field(default="", repr=False)
    email: str = field(default="", repr=False)
    preferred_channel: str = ""
    opted_out: frozenset[str] = frozenset()
    time_zone: str = ""
    fields: Mapping[str, str] = field(default_factory=dict, repr=False)
    # The member as a WeCom external contact, and the staff userid owning the relationship.
    wecom_external_userid: str = field(default="", repr=False)
    wecom_staff_userid: str = field(default="", repr=False)

    def address(self, channel: str) -> str:
        if channel == "sms":
            return self.phone
        if channel == "email":
            return self.email
        if channel == "wecom":
            # A WeCom customer message goes from the staff member owning the relationship to the
            # external contact: without both there is no WeCom address.
            return self.wecom_external_userid if self.wecom_staff_userid else ""
        return self.member_id  # app push: the provider maps member ids to devices

    def sender(self, channel: str) -> str:
        """Who sends to the member on `channel`, where the channel names one per message."""
        return self.wecom_staff_userid if channel == "wecom" else ""


def candidates(request: SendRequest, recipient: Recipient) -> list[str]:
    """The channels to try, best first: the step's choice, then the journey's fallback order."""
    return channel_order(request.channel, request.channels, recipient)


def channel_order(choice: str, policy: ChannelPolicy, recipient: Recipient) -> list[str]:
    """The channels a send step's `choice` means for this member, best first."""
    preferred = recipient.preferred_channel if policy.preferred == "member" else policy.preferred
    if preferred not in CHANNELS:
        preferred = policy.fallback[0] if policy.fallback else ""
    if choice == "preferred":
        order = [preferred, *policy.fallback]
    elif choice == "fallback":
        order = [c for c in policy.fallback if c != preferred]
    else:
        order = [choice, *policy.fallback]
    return list(dict.fromkeys(c for c in order if c))


def outgoing(
    template: Template,
    recipient: Recipient,
    channel: str,
    message_id: str,
    text: tuple[str, str] | None = None,
    tenant_id: str = "",
) -> Outgoing:
    """The message for the member on the channel: `text`, the (subject, body) already rendered and
    logged for it, or the template rendered now."""
    subject, body = text if text is not None else templates.render(template, recipient.fields)
    return Outgoing(
        message_id=message_id,
        channel=channel,
        to=recipient.address(channel),
        subject=subject,
        body=body,
        tenant_id=tenant_id,
        sender=recipient.sender(channel),
    )


class Sender:
    def __init__(
        self,
        db: Database,
        channels: Mapping[str, Channel],
        settings: ChannelSettings,
        tenant_channels: Mapping[str, TenantChannel] | None = None,
    ) -> None:
        self._db = db
        self._tenant_channels = dict(tenant_channels or {})
        self._channels: dict[str, Channel] = {**channels, **self._tenant_channels}
        self._settings = settings
        # Channels with an implementation and their configuration (both fixed for the process); a
        # tenant's channel replaces the process's of its name.
        self._ready = frozenset(
            c for c in channels if settings.configured(c) and c not in self._tenant_channels
        )

    def channel(self, name: str) -> Channel:
        return self._channels[name]

    async def ready(self, tenant_id: str) -> frozenset[str]:
        """The channels the tenant's sends may use: the process's, and those the tenant switched on."""
        on = [name for name, channel in self._tenant_channels.items() if await channel.enabled(tenant_id)]
        return self._ready.union(on)

    def usable(self, channel: str, recipient: Recipient, ready: frozenset[str] | None = None) -> bool:
        """`ready`: the tenant's channels (`ready()`); None for the process's alone."""
        return (
            channel in (self._ready if ready is None else ready)
            and channel not in recipient.opted_out
            and bool(recipient.address(channel))
        )

    async def send(self, request: SendRequest, recipient: Recipient, now: dt.datetime) -> SendOutcome:
        key = Key(request.tenant_id, request.journey_run, request.member_id, request.step_id)
        ready = await self.ready(request.tenant_id)
        tz = local_time.zone(recipient.time_zone, self._settings.default_time_zone)
        day = local_time.local_day(now, tz)
        async with self._db.transaction(request.tenant_id) as conn:
            await message_log.lock_member(conn, key)
            existing = await message_log.find(conn, key)
            if existing is not None and existing.status in message_log.FINAL:
                return SendOutcome(existing.status, existing.channel, existing.detail)
            if existing is not None and existing.status == "sending":
                detail = "an earlier attempt ended while the provider had the message; not sent again"
                await message_log.record(conn, key, "unknown", now, detail=detail)
                return SendOutcome("unknown", existing.channel, detail)
            outcome, channel = await self._check(conn, request, recipient, now, tz, day, ready)
            if outcome is not None:
                if outcome.status == "skipped":
                    await message_log.record(
                        conn,
                        key,
                        "skipped",
                        now,
                        detail=outcome.detail,
                        journey_key=request.journey_key,
                        day=day,
                    )
                return outcome
            text = templates.render(request.template, recipient.fields)
            await message_log.claim(conn, key, request.journey_key, channel, day, now, text)
        # Committed: from here on a crash leaves the row in `sending`, never a second delivery.
        return await self._deliver(request, recipient, key, channel, now, text)

    def route(
        self,
        choice: str,
        policy: ChannelPolicy,
        quiet_hours: QuietHours | None,
        recipient: Recipient,
        now: dt.datetime,
        tz: ZoneInfo,
        ready: frozenset[str] | None = None,
    ) -> SendOutcome | str:
        """What the member alone decides: a skip, a deferral for quiet hours, or the channel
        (`ready`: the tenant's channels, as `usable` takes them)."""
        if not recipient.found:
            return SendOutcome("skipped", detail="member not found in tagging")
        quiet_end = local_time.quiet_until(now, tz, quiet_hours)
        if quiet_end is not None:
            return SendOutcome("deferred", detail="quiet_hours", until=quiet_end)
        usable = [c for c in channel_order(choice, policy, recipient) if self.usable(c, recipient, ready)]
        if not usable:
            return SendOutcome("skipped", detail="no channel: opted out, no address or not configured")
        return usable[0]

    async def _check(
        self,
        conn: Connection,
        request: SendRequest,
        recipient: Recipient,
        now: dt.datetime,
        tz: ZoneInfo,
        day: dt.date,
        ready: frozenset[str],
    ) -> tuple[SendOutcome | None, str]:
        """A deferral or skip decided before any claim, or the channel to send on."""
        if request.coupon is None and coupon_fields_used(request.template):
            # The issue_coupon step was refused, or the member's path jumped past it.
            return SendOutcome("skipped", detail="no coupon: the journey issued the member none"), ""
        routed = self.route(request.channel, request.channels, request.quiet_hours, recipient, now, tz, ready)
        if isinstance(routed, SendOutcome):
            return routed, ""
        channel = routed
        if (
            await message_log.sent_on(conn, request.tenant_id, request.member_id, day)
            >= request.frequency_cap
        ):
            return SendOutcome(
                "deferred", channel, "frequency_cap", until=local_time.next_local_midnight(now, tz)
            ), ""
        limit = self._settings.rate(channel)
        if not await message_log.take_window_slot(conn, request.tenant_id, channel, now, limit):
            return SendOutcome(
                "deferred", channel, "rate_limit", until=message_log.window_of(now) + message_log.WINDOW
            ), ""
        return None, channel

    async def _deliver(
        self,
        request: SendRequest,
        recipient: Recipient,
        key: Key,
        channel: str,
        now: dt.datetime,
        text: tuple[str, str],
    ) -> SendOutcome:
        message_id = f"{request.journey_run}/{request.step_id}"
        message = outgoing(request.template, recipient, channel, message_id, text, request.tenant_id)
        try:
            provider_id = await self._channels[channel].deliver(message)
        except NotDelivered as error:
            await self._record(key, "retry", now, str(error))
            metrics.sent(key.tenant_id, request.journey_key, channel, "retry")
            raise SendNotTaken(f"{channel}: {error}") from error
        except Rejected as error:
            await self._record(key, "failed", now, str(error))
            return SendOutcome("failed", channel, str(error))
        except OutcomeUnknown as error:
            await self._record(key, "unknown", now, str(error))
            return SendOutcome("unknown", channel, str(error))
        # A cancelled attempt (timed out, worker stopping) is not caught: its row stays `sending`,
        # and the next attempt records it as unknown.
        await self._record(key, "sent", now, "", provider_id)
        log.info("message sent", journey=request.journey_key, step=request.step_id, channel=channel)
        return SendOutcome("sent", channel)

    async def _record(
        self, key: Key, status: str, now: dt.datetime, detail: str, provider_id: str = ""
    ) -> None:
        async with self._db.transaction(key.tenant_id) as conn:
            await message_log.record(conn, key, status, now, detail=detail, provider_id=provider_id)
