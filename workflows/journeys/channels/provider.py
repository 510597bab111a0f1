"""SMS, app push and WeCom through one HTTP provider adapter: a JSON POST with a bearer key.

The request body is `{"message_id", "channel", "to", "subject", "body"}` and carries an
`Idempotency-Key` header equal to the message id; a 2xx reply may name the provider's id as `id`.
A refused connection, 429 or 503 means the provider did not take the message (send again later);
other 4xx replies are permanent rejections; a timeout, a dropped connection or another 5xx leaves
the outcome unknown.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import urllib.error
import urllib.request

from workflows.journeys.channels.base import NotDelivered, OutcomeUnknown, Outgoing, Rejected
from workflows.journeys.channels.config import HttpProviderSettings

_NOT_TAKEN = {429, 503}


class HttpProviderChannel:
    def __init__(self, settings: HttpProviderSettings, timeout_seconds: float) -> None:
        self._settings = settings
        self._timeout = timeout_seconds

    async def deliver(self, message: Outgoing) -> str:
        return await asyncio.to_thread(self._deliver, message)

    def _deliver(self, message: Outgoing) -> str:
        body = json.dumps(
            {
                "message_id": message.message_id,
                "channel": message.channel,
                "to": message.to,
                "subject": message.subject,
                "body": message.body,
            }
        ).encode()
        request = urllib.request.Request(
            self._settings.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self._settings.api_key}",
                "Idempotency-Key": message.message_id,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                reply = response.read()
        except urllib.error.HTTPError as error:
            if error.code in _NOT_TAKEN:
                raise NotDelivered(f"provider answered {error.code}") from error
            if 400 <= error.code < 500:
                raise Rejected(f"provider answered {error.code}") from error
            raise OutcomeUnknown(f"provider answered {error.code}") from error
        except urllib.error.URLError as error:
            if isinstance(error.reason, ConnectionRefusedError):
                raise NotDelivered(f"provider refused the connection: {error.reason}") from error
            raise OutcomeUnknown(f"provider unreachable mid-request: {error.reason}") from error
        except (TimeoutError, http.client.HTTPException, OSError) as error:
            raise OutcomeUnknown(f"provider connection failed: {error}") from error
        return _provider_id(reply)


def _provider_id(reply: bytes) -> str:
    try:
        parsed = json.loads(reply or b"{}")
    except json.JSONDecodeError:
        return ""
    return str(parsed.get("id", "")) if isinstance(parsed, dict) else ""
