"""The local outbox `make up` gives the worker as its SMS, push and WeCom provider: it speaks the
HTTP provider adapter's protocol, takes each message once per idempotency key, and writes what it
took to its file, where a developer reads what the journeys sent."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.conftest import REPO_ROOT
from tests.test_devstack import free_port


def post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as reply:
        answer: dict[str, object] = json.loads(reply.read())
        return answer


def test_the_outbox_takes_each_message_once_and_writes_it_down(tmp_path: Path) -> None:
    port, file = free_port(), tmp_path / "outbox.jsonl"
    server = subprocess.Popen([sys.executable, "-m", "deploy.outbox", str(port), str(file)], cwd=REPO_ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{base}/stats", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the outbox never answered"
                time.sleep(0.1)
        single = post(f"{base}/v1/messages?channel=sms", {"message_id": "k1", "to": "+86 138", "body": "Hi"})
        batch = post(
            f"{base}/v1/messages:batch?channel=app_push",
            {
                "messages": [
                    {"message_id": "k1", "idempotency_key": "k1"},
                    {"message_id": "k2", "idempotency_key": "k2"},
                ]
            },
        )
        with urllib.request.urlopen(f"{base}/stats", timeout=5) as reply:
            stats = json.loads(reply.read())
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert batch == {
        "results": [
            {"message_id": "k1", "status": 200, "id": single["id"]},
            {"message_id": "k2", "status": 200, "id": "p-2"},
        ]
    }
    assert stats == {"requests": 2, "messages": 2, "repeats": 1}
    lines = [json.loads(line) for line in file.read_text().splitlines()]
    assert [(line["channel"], line["message_id"], line["id"]) for line in lines] == [
        ("sms", "k1", "p-1"),
        ("app_push", "k2", "p-2"),
    ]
    assert lines[0]["body"] == "Hi"
