"""The external parties of a journey, and only those: an SMTP server (aiosmtpd) and an HTTP message
provider (the standard library's HTTP server), both real servers on loopback ports that record what
they were given.

The provider answers from a script per recipient (e.g. 503 then 200) and can hold a recipient's
request until the test releases it, so a test can stop an activity while the provider has the
message in hand, without sleeping. Its batch endpoint deduplicates by idempotency key, can hold a
batch request, and can drop the connection after taking part of a batch.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.ports import free_port


@dataclass(frozen=True)
class Mail:
    to: tuple[str, ...]
    subject: str
    body: str
    message_id: str


class _MailHandler:
    def __init__(self, box: MailBox) -> None:
        self._box = box

    async def handle_EHLO(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        with self._box.lock:
            self._box.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        raw = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        parsed = message_from_bytes(raw)
        payload = parsed.get_payload(decode=True)
        body = payload.decode() if isinstance(payload, bytes) else str(parsed.get_payload())
        with self._box.lock:
            self._box.mails.append(
                Mail(
                    to=tuple(envelope.rcpt_tos),
                    subject=str(parsed["Subject"]),
                    body=body.strip(),
                    message_id=str(parsed["Message-ID"]),
                )
            )
        return "250 OK"


@dataclass
class MailBox:
    host: str
    port: int
    mails: list[Mail] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Sessions opened (EHLO), so a test can tell one connection per batch from one per message.
    sessions: int = 0

    def to(self, address: str) -> list[Mail]:
        with self.lock:
            return [mail for mail in self.mails if address in mail.to]


@contextmanager
def smtp_server() -> Iterator[MailBox]:
    box = MailBox("127.0.0.1", free_port())
    controller = Controller(_MailHandler(box), hostname=box.host, port=box.port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


@dataclass(frozen=True)
class Delivery:
    path: str
    authorization: str
    idempotency_key: str
    body: dict[str, Any]


@dataclass
class Provider:
    """What the HTTP provider received, by recipient, and how it should answer.

    Its batch endpoint (`batch_url`) is idempotent per message key, as the adapter's contract says:
    a message under a key it took before is answered with the first result and not delivered again
    (`repeats` counts those)."""

    url: str = ""
    batch_url: str = ""
    deliveries: list[Delivery] = field(default_factory=list)
    scripts: dict[str, deque[int]] = field(default_factory=lambda: defaultdict(deque))
    holds: dict[str, threading.Event] = field(default_factory=dict)
    arrived: dict[str, threading.Event] = field(default_factory=lambda: defaultdict(threading.Event))
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Batch endpoint: key -> the provider id it answered; requests received; keys seen again.
    taken: dict[str, str] = field(default_factory=dict)
    batch_requests: int = 0
    repeats: int = 0
    # The next batch requests: take this many messages, then drop the connection without a reply.
    breaks: deque[int] = field(default_factory=deque)
    # Set when a batch request arrives; a batch request waits while `batch_gate` is set and clear.
    batch_arrived: threading.Event = field(default_factory=threading.Event)
    batch_gate: threading.Event | None = None
    batch_seen: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.batch_seen = threading.Condition(self.lock)

    def to(self, recipient: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.body.get("to") == recipient]

    def script(self, recipient: str, *statuses: int) -> None:
        """Answers the recipient's next requests with these statuses (then 200)."""
        with self.lock:
            self.scripts[recipient].extend(statuses)

    def hold(self, recipient: str) -> threading.Event:
        """Keeps the recipient's next request (already recorded) unanswered until the event is set."""
        gate = threading.Event()
        with self.lock:
            self.holds[recipient] = gate
        return gate

    def break_batch(self, after: int) -> None:
        """The next batch request delivers `after` messages, then the connection drops unanswered."""
        with self.lock:
            self.breaks.append(after)

    def wait_for_batches(self, count: int, timeout: float) -> bool:
        """Blocks until `count` batch requests in all have arrived (False after `timeout` seconds)."""
        with self.batch_seen:
            return self.batch_seen.wait_for(lambda: self.batch_requests >= count, timeout)

    def hold_batches(self) -> threading.Event:
        """Batch requests are recorded but not answered until the event is set."""
        gate = threading.Event()
        with self.lock:
            self.batch_gate = gate
            self.batch_arrived.clear()
        return gate


def _handler(provider: Provider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            if self.path.split("?")[0].endswith(":batch"):
                self._batch(body)
                return
            recipient = str(body.get("to", ""))
            with provider.lock:
                queued = provider.scripts[recipient]
                status = queued.popleft() if queued else 200
                gate = provider.holds.pop(recipient, None)
                if status == 200:
                    provider.deliveries.append(self._delivery(self.headers.get("Idempotency-Key", ""), body))
            provider.arrived[recipient].set()
            if gate is not None:
                gate.wait(timeout=60)
            self._reply(status, {"id": f"p-{len(provider.deliveries)}"})

        def _delivery(self, key: str, body: dict[str, Any]) -> Delivery:
            return Delivery(
                path=self.path,
                authorization=self.headers.get("Authorization", ""),
                idempotency_key=key,
                body=body,
            )

        def _batch(self, body: dict[str, Any]) -> None:
            messages = body.get("messages", [])
            results = []
            with provider.lock:
                provider.batch_requests += 1
                provider.batch_seen.notify_all()
                cut = provider.breaks.popleft() if provider.breaks else None
                gate = provider.batch_gate
                for n, message in enumerate(messages):
                    if cut is not None and n >= cut:
                        break
                    key = str(message.get("idempotency_key", ""))
                    if key in provider.taken:
                        provider.repeats += 1
                        results.append(
                            {"message_id": message["message_id"], "status": 200, "id": provider.taken[key]}
                        )
                        continue
                    queued = provider.scripts[str(message.get("to", ""))]
                    status = queued.popleft() if queued else 200
                    if status == 200:
                        provider.taken[key] = f"p-{len(provider.taken) + 1}"
                        provider.deliveries.append(self._delivery(key, message))
                    results.append(
                        {
                            "message_id": message["message_id"],
                            "status": status,
                            "id": provider.taken.get(key, ""),
                        }
                    )
            provider.batch_arrived.set()
            if gate is not None:
                gate.wait(timeout=60)
            if cut is not None:
                self.close_connection = True  # no reply: the caller cannot know what was taken
                return
            self._reply(200, {"results": results})

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            reply = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the tests read what was delivered, not the access log."""

    return Handler


@contextmanager
def http_provider() -> Iterator[Provider]:
    provider = Provider()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(provider))
    server.daemon_threads = True
    provider.url = f"http://127.0.0.1:{server.server_address[1]}/v1/messages"
    provider.batch_url = f"{provider.url}:batch"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        for gate in [*provider.holds.values(), *([provider.batch_gate] if provider.batch_gate else [])]:
            gate.set()
        server.shutdown()
        server.server_close()
