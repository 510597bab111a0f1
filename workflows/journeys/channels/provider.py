"""SMS and app push through one HTTP provider adapter: a JSON POST with a bearer key.

One message: the request body is `{"message_id", "channel", "to", "subject", "body"}` and carries
an `Idempotency-Key` header equal to the message id; a 2xx reply may name the provider's id as `id`.
A refused connection, 429 or 503 means the provider did not take the message (send again later);
other 4xx replies are permanent rejections; a timeout, a dropped connection or another 5xx leaves
the outcome unknown.

A batch (the provider's batch endpoint, for broadcasts): `{"messages": [...]}` of up to
`BATCH_LIMIT` messages of the same shape, each with its `idempotency_key` (the message id); a 2xx
reply is `{"results": [{"message_id", "status", "id"}]}` with an HTTP-like status per message
(2xx taken, 429/503 not taken, other 4xx rejected, anything else unknown). The endpoint is
idempotent per key, which is what lets a batch whose reply was lost be sent again whole.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from workflows.journeys.channels.base import (
    BatchResult,
    NotDelivered,
    OutcomeUnknown,
    Outgoing,
    Rejected,
    Session,
)
from workflows.journeys.channels.config import HttpProviderSettings

_NOT_TAKEN = {429, 503}
BATCH_LIMIT = 1000


def _fields(message: Outgoing) -> dict[str, str]:
    return {
        "message_id": message.message_id,
        "channel": message.channel,
        "to": message.to,
        "subject": message.subject,
        "body": message.body,
    }


class HttpProviderChannel:
    def __init__(self, settings: HttpProviderSettings, timeout_seconds: float) -> None:
        self._settings = settings
        self._timeout = timeout_seconds

    async def deliver(self, message: Outgoing) -> str:
        return await asyncio.to_thread(self._deliver, message)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        """Each message is a request of its own; nothing to keep open."""
        yield self

    def _deliver(self, message: Outgoing) -> str:
        reply = self._post(self._settings.url, _fields(message), message.message_id)
        return _provider_id(reply)

    def _post(self, url: str, payload: dict[str, Any], idempotency_key: str = "") -> bytes:
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self._settings.api_key}",
        }
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        request = urllib.request.Request(
            url, data=json.dumps(payload).encode(), method="POST", headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                reply: bytes = response.read()
                return reply
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


class HttpBatchProviderChannel(HttpProviderChannel):
    """The adapter of a provider that has a batch endpoint (`batch_url`)."""

    @property
    def batch_limit(self) -> int:
        return BATCH_LIMIT

    async def deliver_batch(self, messages: Sequence[Outgoing]) -> list[BatchResult]:
        return await asyncio.to_thread(self._deliver_batch, list(messages))

    def _deliver_batch(self, messages: list[Outgoing]) -> list[BatchResult]:
        if len(messages) > BATCH_LIMIT:
            raise ValueError(f"at most {BATCH_LIMIT} messages per batch request")
        payload = {"messages": [{**_fields(m), "idempotency_key": m.message_id} for m in messages]}
        reply = self._post(self._settings.batch_url, payload)
        answered: dict[str, dict[str, Any]] = {}
        try:
            parsed = json.loads(reply or b"{}")
            results = parsed.get("results", []) if isinstance(parsed, dict) else []
            answered = {str(r.get("message_id")): r for r in results if isinstance(r, dict)}
        except json.JSONDecodeError:
            pass
        return [_batch_result(m.message_id, answered.get(m.message_id)) for m in messages]


def _batch_result(message_id: str, answer: dict[str, Any] | None) -> BatchResult:
    if answer is None:
        return BatchResult(message_id, "unknown", detail="the provider's reply did not name it")
    status = answer.get("status")
    code = status if isinstance(status, int) else 0
    if 200 <= code < 300:
        return BatchResult(message_id, "sent", str(answer.get("id", "")))
    if code in _NOT_TAKEN:
        return BatchResult(message_id, "retry", detail=f"provider answered {code}")
    if 400 <= code < 500:
        return BatchResult(message_id, "failed", detail=f"provider answered {code}")
    return BatchResult(message_id, "unknown", detail=f"provider answered {status!r}")


def _provider_id(reply: bytes) -> str:
    try:
        parsed = json.loads(reply or b"{}")
    except json.JSONDecodeError:
        return ""
    return str(parsed.get("id", "")) if isinstance(parsed, dict) else ""
