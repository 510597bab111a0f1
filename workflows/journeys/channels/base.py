"""What every channel takes and the three ways a delivery can fail, which decide what a retry may do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Outgoing:
    """One rendered message. `message_id` is stable across attempts (the message log's key), so a
    provider that deduplicates by it sees a repeat as one message."""

    message_id: str
    channel: str
    # Phone number (sms), e-mail address (email), or the member id (app push, WeCom: the provider
    # maps it to a device or a WeCom user).
    to: str
    subject: str
    body: str


class NotDelivered(Exception):
    """The provider certainly did not take the message (refused connection, 429, 503, SMTP 4xx):
    sending again later is safe."""


class Rejected(Exception):
    """The provider refused the message for good (bad address, 4xx): sending again is pointless."""


class OutcomeUnknown(Exception):
    """The provider may or may not have taken the message (a timeout or a dropped connection after
    the request went out): it must not be sent again, or the member might get it twice."""


class Channel(Protocol):
    async def deliver(self, message: Outgoing) -> str:
        """Hands the message to the provider; returns the provider's id for it."""
        ...
