"""Building blocks of the journey tests: members in tagging, definitions in the store, runs on a worker."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
from memberops.tagging.v1 import member_pb2, tagging_service_pb2, tagging_service_pb2_grpc
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from runtime.buckets import bucket
from runtime.config import Settings
from runtime.db import Database
from tests.conftest import ACME, unique
from workflows.journeys import client, states, store
from workflows.journeys.activities import holdout_salt
from workflows.journeys.definition import Entry, EventMatch, JourneyDefinition, Step, Template
from workflows.journeys.payloads import Funnel, JourneyInput
from workflows.journeys.workflow import JourneyWorkflow
from workflows.worker import Resources, build_worker

CHANNEL = {
    "sms": member_pb2.CHANNEL_SMS,
    "email": member_pb2.CHANNEL_EMAIL,
    "app_push": member_pb2.CHANNEL_APP_PUSH,
    "wecom": member_pb2.CHANNEL_WECOM,
}


def phone_of(member_id: str) -> str:
    """An E.164 number per member (15 digits, the most E.164 allows), so the provider's records,
    which every test of the session shares, tell members apart. Drawn from a hash of the whole id:
    the id's bytes taken mod 10**8, as before, left about four million numbers for ids that differ
    only after their prefix, and whole batches of two tests collided (a held-out member seemed
    messaged when another test's member with its number was)."""
    digest = int.from_bytes(hashlib.sha256(member_id.encode()).digest()[:8], "big")
    return "+86" + str(digest % 10**12).zfill(12)


def member_message(
    member_id: str,
    *,
    preferred: str = "sms",
    opted_out: Sequence[str] = (),
    time_zone: str = "Asia/Shanghai",
    nickname: str = "Lin",
) -> member_pb2.Member:
    """A member reachable by SMS at phone_of(member_id) and by e-mail at {member_id}@mail.test."""
    return member_pb2.Member(
        member_id=member_id,
        profile=member_pb2.Profile(nickname=nickname, city="Hangzhou"),
        contact=member_pb2.Contact(
            phone=phone_of(member_id),
            email=f"{member_id}@mail.test",
            preferred_channel=CHANNEL[preferred],
            opted_out_channels=[CHANNEL[c] for c in opted_out],
            time_zone=time_zone,
        ),
    )


async def seed_member(
    channel: grpc.aio.Channel,
    member_id: str,
    *,
    preferred: str = "sms",
    opted_out: Sequence[str] = (),
    time_zone: str = "Asia/Shanghai",
    nickname: str = "Lin",
    metadata: tuple[tuple[str, str], ...] = ACME,
    attributes: Mapping[str, str] | None = None,
) -> None:
    stub = tagging_service_pb2_grpc.TaggingServiceStub(channel)
    member = member_message(
        member_id, preferred=preferred, opted_out=opted_out, time_zone=time_zone, nickname=nickname
    )
    member.attributes.update(attributes or {})
    await stub.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=member), metadata=metadata)


def journey(*steps: Step, **changes: object) -> JourneyDefinition:
    """A definition with a fresh key (tests share the database) and a `hello` template."""
    base = JourneyDefinition(
        key=unique("t"),
        name="test journey",
        entry=Entry(event=EventMatch(kind="registered")),
        steps=steps,
        templates={"hello": Template(subject="Hello {nickname}", body="Hi {nickname}, welcome.")},
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def member_in(definition: JourneyDefinition, *, holdout: bool) -> str:
    """A fresh member id that the journey's holdout split puts where asked."""
    while True:
        member_id = unique("m")
        in_holdout = bucket(holdout_salt(definition.key), member_id) < definition.holdout_percent * 100
        if in_holdout == holdout:
            return member_id


@asynccontextmanager
async def running(env: WorkflowEnvironment, settings: Settings, resources: Resources) -> AsyncIterator[None]:
    async with build_worker(env.client, settings, resources):
        yield


async def activate(db: Database, tenant_id: str, key: str, version: int = 0) -> states.JourneyState:
    """Makes `version` (0: the latest) of a stored journey live: only an active journey enrols."""
    return await states.transition(db, tenant_id, key, "active", version, dt.datetime.now(dt.UTC))


async def start(
    env: WorkflowEnvironment,
    settings: Settings,
    db: Database,
    definition: JourneyDefinition,
    member_id: str,
    tenant_id: str = "acme",
    entry_time: dt.datetime | None = None,
) -> WorkflowHandle[JourneyWorkflow, Funnel]:
    """The member's run of the journey (stored and activated); `entry_time`: when its entry fact
    happened, for a run started late as the dispatcher may."""
    stored = await store.put_definition(db, tenant_id, definition)
    await activate(db, tenant_id, definition.key, stored.version)
    return await client.start_member_journey(
        env.client,
        settings.temporal_task_queue,
        definition,
        JourneyInput(
            tenant_id=tenant_id, journey_key=definition.key, member_id=member_id, entry_time=entry_time
        ),
    )


HISTORIES = Path(__file__).parent / "histories"


async def keep_history(handle: WorkflowHandle[Any, Any], name: str) -> None:
    """With MEMBEROPS_RECORD_HISTORIES=1, stores the run's history for the replay test
    (tests/workflows/test_replay.py); the committed ones were recorded this way."""
    if os.environ.get("MEMBEROPS_RECORD_HISTORIES"):
        (HISTORIES / f"{name}.json").write_text((await handle.fetch_history()).to_json())


def figures(funnel: Funnel, step_id: str) -> dict[str, object]:
    (step,) = [s for s in funnel.steps if s.step_id == step_id]
    return {k: v for k, v in dataclasses.asdict(step).items() if v and k != "step_id"}
