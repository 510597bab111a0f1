"""ListMemberJourneys: the journeys a member is or was in, and what they were sent.

Runs are a member journey's enrolments and a broadcast cohort's places, with the arm as the
report counts it (holdout; else the arm of the last split the member took; else treated), the
state, and the current step: a cohort member's next step (its position in its version's steps,
'' once it took them all); for a member run, the step of its newest message (the schema keeps no
position for those, the workflow holds it). Messages are the message log's rows, newest first and
paged, with the subject and body the member was sent (empty for a send skipped before it was
rendered, and for messages logged before the log kept its text).
"""

from __future__ import annotations

import datetime as dt

import asyncpg
from google.protobuf import timestamp_pb2
from memberops.journeys.v1 import journeys_service_pb2 as pb

from runtime import page_tokens
from runtime.db import Connection, Database
from runtime.errors import InvalidArgument
from services.audience.evaluation import member_id_from_name
from services.journeys import member_journeys_store
from workflows.journeys import store

DEFAULT_PAGE = 50
MAX_PAGE = 200
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _stamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _micros(value: dt.datetime) -> int:
    return (value - _EPOCH) // dt.timedelta(microseconds=1)


def arm_of(holdout: bool, split_arms: list[str]) -> str:
    if holdout:
        return "holdout"
    if split_arms:
        return split_arms[-1].partition(":")[2] or split_arms[-1]
    return "treated"


def _token(member_id: str, row: asyncpg.Record) -> str:
    return page_tokens.encode(
        f"memberMessages/{member_id}", _micros(row["create_time"]), row["journey_run"], row["step_id"]
    )


def _after(member_id: str, token: str) -> tuple[dt.datetime, str, str] | None:
    keys = page_tokens.decode(token, f"memberMessages/{member_id}", (int, str, str))
    if keys is None:
        return None
    micros, run, step = keys
    assert isinstance(micros, int) and isinstance(run, str) and isinstance(step, str)
    try:
        return _EPOCH + dt.timedelta(microseconds=micros), run, step
    except OverflowError:
        raise InvalidArgument.field("page_token", "is not a token this list returned") from None


async def _runs(conn: Connection, member_id: str) -> list[pb.MemberJourneyRun]:
    rows = await member_journeys_store.runs(conn, member_id)
    cohort_versions = sorted({(r["journey_key"], r["version"]) for r in rows if r["position"] is not None})
    step_ids = {
        (d["journey_key"], d["version"]): [step.id for step in store.stored(d).definition.steps]
        for d in await member_journeys_store.steps(conn, cohort_versions)
    }
    answer = []
    for r in rows:
        step = r["last_step"]
        if r["position"] is not None:
            ids = step_ids.get((r["journey_key"], r["version"]), [])
            step = ids[r["position"]] if r["position"] < len(ids) else ""
        answer.append(
            pb.MemberJourneyRun(
                journey=f"journeys/{r['journey_key']}",
                version=r["version"],
                arm=arm_of(r["holdout"], list(r["split_arms"])),
                state=r["state"],
                current_step=step,
                enrol_time=_stamp(r["enter_time"]),
                broadcast_id=r["broadcast_id"],
            )
        )
    return answer


async def answer(
    db: Database, tenant_id: str, request: pb.ListMemberJourneysRequest
) -> pb.ListMemberJourneysResponse:
    """The runs (first page only) and a page of messages, or InvalidArgument naming the field."""
    member_id = member_id_from_name(request.member, "member")
    size = page_tokens.page_size(request.page_size, DEFAULT_PAGE, MAX_PAGE)
    after = _after(member_id, request.page_token)
    async with db.transaction(tenant_id, readonly=True, snapshot=True) as conn:
        runs = await _runs(conn, member_id) if after is None else []
        rows = await member_journeys_store.messages(conn, member_id, after, size + 1)
    reply = pb.ListMemberJourneysResponse(
        runs=runs,
        messages=[
            pb.MemberMessage(
                journey=f"journeys/{r['journey_key']}",
                step_id=r["step_id"],
                channel=r["channel"],
                outcome=r["status"],
                subject=r["subject"] or "",
                body=r["body"] or "",
                send_time=_stamp(r["create_time"]),
            )
            for r in rows[:size]
        ],
    )
    if len(rows) > size:
        reply.next_page_token = _token(member_id, rows[size - 1])
    return reply
