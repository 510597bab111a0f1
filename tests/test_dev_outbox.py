"""The local outbox `make up` gives the worker as its SMS, push and WeCom provider: it speaks the
HTTP provider adapter's protocol, takes each message once per idempotency key, and writes what it
took to its file, where a developer reads what the journeys sent."""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request
from pathlib import Path

from tests.conftest import REPO_ROOT
from tests.ports import free_port
from tests.waiting import eventually


def post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as reply:
        answer: dict[str, object] = json.loads(reply.read())
        return answer


def stats(base: str) -> dict[str, object] | None:
    """The outbox's counters, None while it does not answer yet."""
    try:
        with urllib.request.urlopen(f"{base}/stats", timeout=1) as reply:
            answer: dict[str, object] = json.loads(reply.read())
            return answer
    except OSError:
        return None


async def test_the_outbox_takes_each_message_once_and_writes_it_down(tmp_path: Path) -> None:
    port, file = free_port(), tmp_path / "outbox.jsonl"
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "deploy.outbox", str(port), str(file), cwd=REPO_ROOT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        await eventually(lambda: asyncio.to_thread(stats, base), "did the outbox answer", interval=0.1)
        single = await asyncio.to_thread(
            post, f"{base}/v1/messages?channel=sms", {"message_id": "k1", "to": "+86 138", "body": "Hi"}
        )
        batch = await asyncio.to_thread(
            post,
            f"{base}/v1/messages:batch?channel=app_push",
            {
                "messages": [
                    {"message_id": "k1", "idempotency_key": "k1"},
                    {"message_id": "k2", "idempotency_key": "k2"},
                ]
            },
        )
        counters = await asyncio.to_thread(stats, base)
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), timeout=10)
    assert batch == {
        "results": [
            {"message_id": "k1", "status": 200, "id": single["id"]},
            {"message_id": "k2", "status": 200, "id": "p-2"},
        ]
    }
    assert counters == {"requests": 2, "messages": 2, "repeats": 1}
    lines = [json.loads(line) for line in file.read_text().splitlines()]
    assert [(line["channel"], line["message_id"], line["id"]) for line in lines] == [
        ("sms", "k1", "p-1"),
        ("app_push", "k2", "p-2"),
    ]
    assert lines[0]["body"] == "Hi"
