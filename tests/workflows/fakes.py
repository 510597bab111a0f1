"""The external parties of a journey, and only those: an SMTP server (aiosmtpd) and an HTTP message
provider (the standard library's HTTP server), both real servers on loopback ports that record what
they were given.

The provider answers from a script per recipient (e.g. 503 then 200) and can hold a recipient's
request until the test releases it, so a test can stop an activity while the provider has the
message in hand, without sleeping.
"""

from __future__ import annotations

import json
import socket
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Mail:
    to: tuple[str, ...]
    subject: str
    body: str
    message_id: str


class _MailHandler:
    def __init__(self, box: MailBox) -> None:
        self._box = box

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
    """What the HTTP provider received, by recipient, and how it should answer."""

    url: str = ""
    deliveries: list[Delivery] = field(default_factory=list)
    scripts: dict[str, deque[int]] = field(default_factory=lambda: defaultdict(deque))
    holds: dict[str, threading.Event] = field(default_factory=dict)
    arrived: dict[str, threading.Event] = field(default_factory=lambda: defaultdict(threading.Event))
    lock: threading.Lock = field(default_factory=threading.Lock)

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


def _handler(provider: Provider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            recipient = str(body.get("to", ""))
            with provider.lock:
                queued = provider.scripts[recipient]
                status = queued.popleft() if queued else 200
                gate = provider.holds.pop(recipient, None)
                if status == 200:
                    provider.deliveries.append(
                        Delivery(
                            path=self.path,
                            authorization=self.headers.get("Authorization", ""),
                            idempotency_key=self.headers.get("Idempotency-Key", ""),
                            body=body,
                        )
                    )
            provider.arrived[recipient].set()
            if gate is not None:
                gate.wait(timeout=60)
            reply = json.dumps({"id": f"p-{len(provider.deliveries)}"}).encode()
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
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        for gate in list(provider.holds.values()):
            gate.set()
        server.shutdown()
        server.server_close()
