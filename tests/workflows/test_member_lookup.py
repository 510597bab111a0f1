"""MemberLookup: the worker's activity calls the real tagging service through its gRPC stub."""

from __future__ import annotations

import uuid

import grpc
import pytest
from memberops.tagging.v1 import member_pb2, tagging_service_pb2, tagging_service_pb2_grpc
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import WorkflowEnvironment

from runtime.config import Settings
from tests.conftest import ACME, TENANT_ACME, unique
from workflows.member_lookup.payloads import MemberLookupInput, MemberSummary
from workflows.member_lookup.workflow import MemberLookupWorkflow
from workflows.worker import Resources, build_worker


async def seed_member(channel: grpc.aio.Channel, member_id: str) -> None:
    stub = tagging_service_pb2_grpc.TaggingServiceStub(channel)
    await stub.UpsertMember(
        tagging_service_pb2.UpsertMemberRequest(
            member=member_pb2.Member(
                member_id=member_id,
                profile=member_pb2.Profile(
                    city="Suzhou", city_tier=member_pb2.CITY_TIER_2, register_channel="app"
                ),
                contact=member_pb2.Contact(
                    wecom_external_userid=f"wm{member_id.replace('-', '')}", wecom_staff_userid="li.na"
                ),
            )
        ),
        metadata=ACME,
    )


async def run_lookup(
    env: WorkflowEnvironment, settings: Settings, resources: Resources, member_id: str
) -> MemberSummary:
    async with build_worker(env.client, settings, resources):
        return await env.client.execute_workflow(
            MemberLookupWorkflow.run,
            MemberLookupInput(tenant_id=TENANT_ACME, member_id=member_id),
            id=f"member-lookup-{uuid.uuid4()}",
            task_queue=settings.temporal_task_queue,
        )


async def test_lookup_reads_the_member_from_tagging(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    worker_tagging_channel: grpc.aio.Channel,
    resources: Resources,
) -> None:
    member_id = unique()
    await seed_member(worker_tagging_channel, member_id)
    summary = await run_lookup(time_skipping_env, worker_settings, resources, member_id)
    assert summary == MemberSummary(
        member_id=member_id,
        found=True,
        city="Suzhou",
        city_tier="CITY_TIER_2",
        register_channel="app",
        revision=1,
        wecom_external_userid=f"wm{member_id.replace('-', '')}",
        wecom_staff_userid="li.na",
    )


async def test_lookup_of_an_unknown_member_says_not_found(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    worker_tagging_channel: grpc.aio.Channel,
    resources: Resources,
) -> None:
    member_id = unique()
    summary = await run_lookup(time_skipping_env, worker_settings, resources, member_id)
    assert summary == MemberSummary(member_id=member_id, found=False)


async def test_invalid_member_id_fails_without_retrying(
    time_skipping_env: WorkflowEnvironment,
    worker_settings: Settings,
    worker_tagging_channel: grpc.aio.Channel,
    resources: Resources,
) -> None:
    with pytest.raises(WorkflowFailureError) as caught:
        await run_lookup(time_skipping_env, worker_settings, resources, "not a valid id")
    activity_error = caught.value.cause
    assert isinstance(activity_error, ActivityError)
    assert isinstance(activity_error.cause, ApplicationError)
    assert activity_error.cause.type == "INVALID_ARGUMENT"
    assert activity_error.cause.non_retryable


async def test_lookup_runs_on_the_dev_server_too(
    dev_server_env: WorkflowEnvironment,
    worker_settings: Settings,
    worker_tagging_channel: grpc.aio.Channel,
    resources: Resources,
) -> None:
    member_id = unique()
    await seed_member(worker_tagging_channel, member_id)
    summary = await run_lookup(dev_server_env, worker_settings, resources, member_id)
    assert summary.found and summary.city == "Suzhou"
