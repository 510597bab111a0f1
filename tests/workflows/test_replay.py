"""Replaying recorded journey histories with today's code: a change to the interpreter that would
make a running journey take another path fails here (add `workflow.patched` for it instead).

The histories under `histories/` were recorded from the journey tests with
`MEMBEROPS_RECORD_HISTORIES=1 .venv/bin/python -m pytest tests/workflows/test_journeys.py`;
re-record only when a change is meant to be incompatible and no journey of the old code runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from workflows.journeys.workflow import JourneyWorkflow

HISTORIES = {
    path.stem: path.read_text() for path in sorted((Path(__file__).parent / "histories").glob("*.json"))
}


def test_there_are_recorded_histories() -> None:
    assert set(HISTORIES) >= {
        "thirty_day_journey",
        "goal_during_wait_for_event",
        "quiet_hours_deferral",
        "holdout_converts",
        "pause_and_resume",
        # Entered through the dispatcher: one `journeys.enter` activity, signals with event ids.
        "dispatched_new_customer",
    }


@pytest.mark.parametrize("name", sorted(HISTORIES))
async def test_a_recorded_history_replays_deterministically(name: str) -> None:
    text = HISTORIES[name]
    events = json.loads(text)["events"]
    assert events[0]["workflowExecutionStartedEventAttributes"]["workflowType"]["name"] == "Journey"
    result = await Replayer(workflows=[JourneyWorkflow]).replay_workflow(
        WorkflowHistory.from_json(name, text), raise_on_replay_failure=False
    )
    assert result.replay_failure is None
