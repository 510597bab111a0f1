"""A local message provider, in a process of its own: `python -m deploy.outbox PORT [FILE]`.

`make up` runs it as the SMS, app-push and WeCom provider of the worker (unless the environment
names real ones), so the shipped journeys deliver somewhere a developer can read: each message it
takes is one JSON line in FILE. The benchmarks run it without a file.

It answers the HTTP provider adapter's two endpoints (see workflows/journeys/channels/provider.py):
a single message at `/v1/messages` and a batch at `/v1/messages:batch`, idempotent per key as the
adapter's contract says, taking every message. `?channel=` names the channel in FILE's lines.
It counts what it took; `GET /stats` tells.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit


class Outbox(ThreadingHTTPServer):
    """The server, with what it took: idempotency key -> provider id."""

    daemon_threads = True

    def __init__(self, port: int, file: IO[str] | None) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.lock = threading.Lock()
        self.taken: dict[str, str] = {}
        self.stats = {"requests": 0, "messages": 0, "repeats": 0}
        self.file = file

    def take(self, channel: str, message: dict[str, Any]) -> str:
        key = str(message.get("idempotency_key", ""))
        with self.lock:
            if key in self.taken:
                self.stats["repeats"] += 1
                return self.taken[key]
            self.stats["messages"] += 1
            taken = self.taken[key] = f"p-{len(self.taken) + 1}"
            if self.file is not None:
                self.file.write(json.dumps({"channel": channel, "id": taken, **message}) + "\n")
                self.file.flush()
            return taken


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Outbox

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        url = urlsplit(self.path)
        batch = url.path.endswith(":batch")
        channel = parse_qs(url.query).get("channel", [""])[0]
        messages = (
            body.get("messages", []) if batch else [{**body, "idempotency_key": body.get("message_id")}]
        )
        with self.server.lock:
            self.server.stats["requests"] += 1
        results = [
            {"message_id": m.get("message_id"), "status": 200, "id": self.server.take(channel, m)}
            for m in messages
        ]
        self._reply({"results": results} if batch else {"id": results[0]["id"]})

    def do_GET(self) -> None:
        with self.server.lock:
            self._reply(dict(self.server.stats))

    def _reply(self, payload: dict[str, Any]) -> None:
        reply = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def main() -> None:
    path = sys.argv[2] if len(sys.argv) > 2 else None
    with open(path, "a", encoding="utf-8") if path else contextlib.nullcontext() as file:
        Outbox(int(sys.argv[1]), file).serve_forever()


if __name__ == "__main__":
    main()
