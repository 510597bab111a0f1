"""The README's journey walk-through works as written: create, validate, activate, pause and
report with the README's JSON bodies, sent through buf curl (as a reader would) and through
protobuf's JSON parser into the stub."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from google.protobuf import json_format
from memberops.journeys.v1 import journeys_service_pb2

from runtime import app
from tests.conftest import ACME, TOKEN_ACME, unique
from tests.fuzz.bases import message_class
from tests.journeys import readme_calls

if TYPE_CHECKING:
    from memberops.journeys.v1.journeys_service_pb2_grpc import JourneyServiceAsyncStub as Stub

SERVICE = journeys_service_pb2.DESCRIPTOR.services_by_name["JourneyService"]


RPCS = ["ValidateJourney", "CreateJourney", "ActivateJourney", "PauseJourney", "GetJourneyReport"]


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
    assert [step["stepId"] for step in report["steps"]] == ["thanks", "wait-2d", "their-hour", "nudge"]


def test_the_readme_walks_a_journey_through_its_life() -> None:
    assert [rpc for rpc, _ in readme_calls.calls()] == RPCS


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
async def test_the_readme_block_runs_as_written(journeys: app.RunningService, tmp_path: Path) -> None:
    """The README's shell block itself, run by bash (the definition file lands in a temporary
    directory), against the test's service and token: each buf curl prints one JSON answer."""
    key = unique("readme")
    block = readme_calls.runnable(key, f"127.0.0.1:{journeys.port}", TOKEN_ACME)
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        block,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    check(dict(zip(RPCS, json_documents(out.decode()), strict=True)), key)


def json_documents(text: str) -> list[Any]:
    """The JSON documents printed one after another (buf curl prints each answer indented)."""
    decoder, found, position = json.JSONDecoder(), [], 0
    while text[position:].strip():
        position += len(text[position:]) - len(text[position:].lstrip())
        document, position = decoder.raw_decode(text, position)
        found.append(document)
    return found
