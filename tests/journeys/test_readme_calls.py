"""The README's journey walk-through works as written: create, validate, activate, pause and
report with the README's JSON bodies, sent through buf curl (as a reader would) and through
protobuf's JSON parser into the stub."""

from __future__ import annotations

import asyncio
import json
import shutil
from typing import TYPE_CHECKING, Any

import pytest
from google.protobuf import json_format
from memberops.journeys.v1 import journeys_service_pb2

from runtime import app
from tests.conftest import ACME, REPO_ROOT, TOKEN_ACME, unique
from tests.fuzz.bases import message_class
from tests.journeys import readme_calls

if TYPE_CHECKING:
    from memberops.journeys.v1.journeys_service_pb2_grpc import JourneyServiceAsyncStub as Stub

SERVICE = journeys_service_pb2.DESCRIPTOR.services_by_name["JourneyService"]
BUF = ("npx", "--yes", "@bufbuild/buf@1.75.0")


def check(answers: dict[str, dict[str, Any]], key: str) -> None:
    """What each step of the walk-through answers, as protobuf JSON (camelCase names)."""
    assert answers["ValidateJourney"]["valid"] is True
    created = answers["CreateJourney"]
    assert (created["name"], created["version"], created["state"]) == (
        f"journeys/{key}",
        1,
        "JOURNEY_STATE_DRAFT",
    )
    assert answers["ActivateJourney"]["state"] == "JOURNEY_STATE_ACTIVE"
    assert answers["ActivateJourney"]["liveVersion"] == 1
    assert answers["PauseJourney"]["state"] == "JOURNEY_STATE_PAUSED"
    report = answers["GetJourneyReport"]
    assert report["journeyKey"] == key
    assert [step["stepId"] for step in report["steps"]] == ["thanks", "wait-2d", "their-hour", "coupon"]


async def test_the_readme_bodies_through_protobuf_json(journeys_stub: Stub) -> None:
    key = unique("readme")
    answers = {}
    for rpc, body in readme_calls.calls(key):
        method = SERVICE.methods_by_name[rpc]
        request = json_format.ParseDict(body, message_class(method.input_type)())
        reply = await getattr(journeys_stub, rpc)(request, metadata=ACME)
        answers[rpc] = json_format.MessageToDict(reply)
    check(answers, key)


@pytest.mark.skipif(shutil.which("npx") is None, reason="buf runs through npx, which needs node")
async def test_the_readme_through_buf_curl(journeys: app.RunningService) -> None:
    key = unique("readme")
    answers = {}
    for rpc, body in readme_calls.calls(key):
        process = await asyncio.create_subprocess_exec(
            *BUF,
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "-H",
            f"authorization: Bearer {TOKEN_ACME}",
            "-d",
            json.dumps(body),
            f"http://127.0.0.1:{journeys.port}/{readme_calls.SERVICE}/{rpc}",
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        assert process.returncode == 0, f"buf curl {rpc}: {err.decode()}"
        answers[rpc] = json.loads(out)
    check(answers, key)
