"""Replaying recorded histories with today's code: a change to a workflow that would make a running
journey, broadcast or dispatcher take another path fails here (add `workflow.patched` for it instead).

The histories under `histories/` were recorded from the workflow tests with
`MEMBEROPS_RECORD_HISTORIES=1 .venv/bin/python -m pytest tests/workflows/test_journeys.py
tests/workflows/test_member_steps.py tests/workflows/test_cohorts.py tests/workflows/test_dispatcher.py
tests/workflows/test_broadcast_runs.py tests/workflows/test_tag_history_rebuild.py
tests/workflows/test_coupon_journeys.py tests/workflows/test_coupon_issuance.py` (each `-k` a test
that keeps a history)
(see `keep_history`); re-record
only when a change is meant to be incompatible and no run of the old code is left. Each history is
one run: one that continued as new is replayed up to its continue-as-new, the next run on its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from workflows.coupon_issuance.workflow import CouponIssuanceWorkflow
from workflows.dispatcher.workflow import DispatcherWorkflow
from workflows.journeys.broadcast_run.workflow import BroadcastRunWorkflow
from workflows.journeys.cohort.workflow import CohortJourneyWorkflow
from workflows.journeys.control.workflow import JourneyControlWorkflow
from workflows.journeys.workflow import JourneyWorkflow
from workflows.tag_history.workflow import TagHistoryRebuildWorkflow
from workflows.wecom.workflow import WeComSyncWorkflow

HISTORIES = {
    path.stem: path.read_text() for path in sorted((Path(__file__).parent / "histories").glob("*.json"))
}
# The workflow class of each recorded workflow type (the name its `workflow.defn` registers).
WORKFLOWS: dict[str, type] = {
    "Journey": JourneyWorkflow,
    "CohortJourney": CohortJourneyWorkflow,
    "Dispatcher": DispatcherWorkflow,
    "BroadcastRun": BroadcastRunWorkflow,
    "JourneyControl": JourneyControlWorkflow,
    "TagHistoryRebuild": TagHistoryRebuildWorkflow,
    "CouponIssuance": CouponIssuanceWorkflow,
    "WeComSync": WeComSyncWorkflow,
}


def started(text: str) -> dict[str, object]:
    """The attributes of the history's first event, which names the workflow type."""
    attributes: dict[str, object] = json.loads(text)["events"][0]["workflowExecutionStartedEventAttributes"]
    return attributes


def workflow_type(text: str) -> str:
    kind = started(text)["workflowType"]
    assert isinstance(kind, dict)
    return str(kind["name"])


def test_there_are_recorded_histories() -> None:
    assert set(HISTORIES) >= {
        "thirty_day_journey",
        "goal_during_wait_for_event",
        "quiet_hours_deferral",
        "holdout_converts",
        "pause_and_resume",
        # Entered through the dispatcher: one `journeys.enter` activity, signals with event ids.
        "dispatched_new_customer",
        # A split by the member's bucket, its arm recorded (the `split-by-bucket` patch), and one
        # recorded before that patch, which drew `workflow.random()`.
        "member_split_by_bucket",
        "member_split_by_random",
        # Broadcasts: a split, a two-day wait and goal events signalled to the cohort; a deferral
        # to the end of quiet hours; a pause and a resume; a run that continued as new, and the run
        # after it, which begins from the state it carried.
        "cohort_split_wait_and_goal",
        "cohort_quiet_hours_deferral",
        "cohort_pause_and_resume",
        "cohort_continued_as_new",
        "cohort_last_run_after_continue_as_new",
        # The dispatcher, terminated as its tests leave it: rounds with a report of the journeys'
        # figures; a round lost with its worker and done again by the next one.
        "dispatcher_enrols_and_signals",
        "dispatcher_round_lost_and_redone",
        # Broadcast runs: a scheduled one whose cohort was stopped, one that snapshotted its
        # audience and ran the cohort to its end, one whose fixed snapshot was broadcast already.
        "broadcast_run_scheduled_and_stopped",
        "broadcast_run_to_a_new_snapshot",
        "broadcast_run_snapshot_broadcast_already",
        # Issue 19: a member entered at its entry fact's time (`entry-fact-time`) and converted by
        # an order judged by its own time (`event-time-goals`); history ending no wait_for_event
        # and exiting nobody (`event-time-waits-and-exits`); a branch, the member's own send hour
        # and a wait_for_event that times out; a JourneyControl pause.
        "entered_at_the_fact_and_converted",
        "history_ends_no_wait",
        "branch_own_hour_and_wait_timeout",
        "journey_control_pause",
        # Issue 20: a history rebuild stopped midway (its worker restarted), continued as new
        # every three steps: its first run and its last (tests/workflows/test_tag_history_rebuild.py).
        "tag_history_continued_as_new",
        "tag_history_last_run",
        # Issue 23: an issue_coupon step whose first attempt's answer was lost (retried, the same
        # coupon) and a send showing the coupon's code (tests/workflows/test_coupon_journeys.py).
        "issued_coupon_in_message",
        # Issue 23: a coupon issuance to an audience continued as new after each page: its first
        # run and its last (tests/workflows/test_coupon_issuance.py).
        "coupon_issuance_continued_as_new",
        "coupon_issuance_last_run",
        # Issue 24: a tenant's WeCom sync with rounds (pull, push, reconciliation pages), wake and
        # resync signals, and rounds lost with their worker and done again (tests/wecom/test_push.py).
        "wecom_sync_rounds_lost_and_redone",
        # The same after the `wecom-read-results` patch: each round also reads back the results of
        # WeCom messages sent.
        "wecom_sync_reading_results",
    }
    by_type = {name: workflow_type(text) for name, text in HISTORIES.items()}
    assert set(by_type.values()) == set(WORKFLOWS)
    assert by_type["cohort_continued_as_new"] == by_type["cohort_last_run_after_continue_as_new"]
    assert "continuedExecutionRunId" in started(HISTORIES["cohort_last_run_after_continue_as_new"])
    last = json.loads(HISTORIES["cohort_continued_as_new"])["events"][-1]
    assert last["eventType"] == "EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW"


@pytest.mark.parametrize("name", sorted(HISTORIES))
async def test_a_recorded_history_replays_deterministically(name: str) -> None:
    text = HISTORIES[name]
    workflow_class = WORKFLOWS[workflow_type(text)]
    result = await Replayer(workflows=[workflow_class]).replay_workflow(
        WorkflowHistory.from_json(name, text), raise_on_replay_failure=False
    )
    assert result.replay_failure is None
