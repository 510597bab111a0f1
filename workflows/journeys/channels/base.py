"""What every channel takes and the three ways a delivery can fail, which decide what a retry may do."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Outgoing:
    """One rendered message. `message_id` is stable across attempts (the message log's key), so a
    provider that deduplicates by it sees a repeat as one message."""

    message_id: str
    channel: str
    # Phone number (sms), e-mail address (email), the member id (app push: the provider maps it to
    # a device) or the member's WeCom external_userid (wecom).
    to: str
    subject: str
    body: str
    # The tenant the message is sent for (a channel whose account is the tenant's: WeCom), and who
    # sends it where the channel names a sender per message (wecom: the staff userid owning the
    # relationship); '' for the others.
    tenant_id: str = ""
    sender: str = ""


class NotDelivered(Exception):
    """The provider certainly did not take the message (refused connection, 429, 503, SMTP 4xx):
    sending again later is safe."""


class Rejected(Exception):
    """The provider refused the message for good (bad address, 4xx): sending again is pointless."""


class OutcomeUnknown(Exception):
    """The provider may or may not have taken the message (a timeout or a dropped connection after
    the request went out): it must not be sent again, or the member might get it twice."""


class Session(Protocol):
    async def deliver(self, message: Outgoing) -> str:
        """Hands the message to the provider; returns the provider's id for it."""
        ...


class Channel(Session, Protocol):
    def session(self) -> AbstractAsyncContextManager[Session]:
        """A connection for many messages one after another (one SMTP connection for a batch)."""
        ...


class TenantChannel(Channel, Protocol):
    """A channel each tenant switches on for itself (WeCom: the tenant's connector), rather than
    one configured for the whole process."""

    async def enabled(self, tenant_id: str) -> bool:
        """Whether the tenant's sends may use it now."""
        ...


@dataclass(frozen=True)
class BatchResult:
    """What a batch endpoint said about one message: `sent` (with the provider's id), `failed`
    (rejected for good), `retry` (not taken, send again) or `unknown` (no answer for it)."""

    message_id: str
    status: str
    provider_id: str = ""
    detail: str = ""


@runtime_checkable
class BatchChannel(Protocol):
    """A provider endpoint taking many messages in one request, each under its own idempotency key:
    a message sent again under a key it has seen is not delivered again (the provider answers the
    first result), so a batch whose outcome is unknown may be sent again whole."""

    @property
    def batch_limit(self) -> int:
        """Messages per request at most."""
        ...

    async def deliver_batch(self, messages: Sequence[Outgoing]) -> list[BatchResult]:
        """One result per message, in order; raises NotDelivered, Rejected or OutcomeUnknown when
        the request as a whole failed that way."""
        ...
