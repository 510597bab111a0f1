"""A message provider for benchmarks, in a process of its own: `python -m bench.provider PORT`.

It answers the HTTP provider adapter's two endpoints (see workflows/journeys/channels/provider.py):
a single message at `/v1/messages` and a batch at `/v1/messages:batch`, idempotent per key as the
adapter's contract says, taking every message. It counts what it took; `GET /stats` tells.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_lock = threading.Lock()
_taken: dict[str, str] = {}
_stats = {"requests": 0, "messages": 0, "repeats": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        batch = self.path.split("?")[0].endswith(":batch")
        messages = (
            body.get("messages", []) if batch else [{**body, "idempotency_key": body.get("message_id")}]
        )
        results = []
        with _lock:
            _stats["requests"] += 1
            for message in messages:
                key = str(message.get("idempotency_key", ""))
                if key in _taken:
                    _stats["repeats"] += 1
                else:
                    _stats["messages"] += 1
                    _taken[key] = f"p-{len(_taken) + 1}"
                results.append({"message_id": message.get("message_id"), "status": 200, "id": _taken[key]})
        self._reply({"results": results} if batch else {"id": results[0]["id"]})

    def do_GET(self) -> None:
        with _lock:
            self._reply(dict(_stats))

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
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
