"""`setup` against a real Temporal that knows nothing of MemberOps: a dev server started without
the search attributes `make up` passes it, as a fresh cluster from the Helm chart or compose is."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client, ScheduleActionStartWorkflow, ScheduleDescription
from temporalio.testing import WorkflowEnvironment

from deploy import binaries, setup
from runtime.config import Settings
from tests.conftest import TOKEN_ACME, TOKEN_GLOBEX, unique
from tests.deploy import commands
from workflows.periodic import schedules

# A namespace where an attribute of ours already exists with another type.
CLASHING_NAMESPACE = "clashing"
TENANTS = {TOKEN_ACME: "acme", TOKEN_GLOBEX: "globex"}


@pytest.fixture(scope="module")
async def bare_temporal() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(binaries.temporal_cli()),
        ui=False,
        dev_server_extra_args=["--headless", "--namespace", CLASHING_NAMESPACE],
    )
    yield env
    await env.shutdown()


async def custom_attributes(client: Client, namespace: str) -> dict[str, int]:
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    return dict(listed.custom_attributes)


async def describe_all(client: Client) -> dict[str, ScheduleDescription]:
    return {
        sid: await client.get_schedule_handle(sid).describe()
        for sid in (
            schedules.schedule_id(tenant, job) for tenant in TENANTS.values() for job in schedules.SCHEDULED
        )
    }


async def test_setup_registers_the_attributes_and_schedules_and_a_second_run_changes_nothing(
    bare_temporal: WorkflowEnvironment,
) -> None:
    client = bare_temporal.client
    address = client.service_client.config.target_host
    task_queue = unique("setup")
    assert not set(await custom_attributes(client, "default")) & set(setup.wanted_attributes())

    finished = await commands.run(
        "setup",
        {
            "TEMPORAL_ADDRESS": address,
            "TEMPORAL_NAMESPACE": "default",
            "MEMBEROPS_TASK_QUEUE": task_queue,
            "MEMBEROPS_AUTH_TOKENS": ",".join(f"{token}={tenant}" for token, tenant in TENANTS.items()),
        },
    )

    assert finished.returncode == 0, finished.stderr
    registered = await custom_attributes(client, "default")
    for name in setup.wanted_attributes():
        assert registered.get(name) == IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD, name
        assert f"registered          {name}" in finished.stdout
    created = await describe_all(client)
    assert len(created) == len(TENANTS) * len(schedules.SCHEDULED)
    for description in created.values():
        action = description.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        assert action.task_queue == task_queue

    settings = Settings(
        auth_tokens=TENANTS,
        temporal_address=address,
        temporal_task_queue=task_queue,
        temporal_namespace="default",
    )
    again = await setup.run(settings, {})

    assert again.attributes == [(name, "already registered") for name in setup.wanted_attributes()]
    assert await custom_attributes(client, "default") == registered
    after = await describe_all(client)
    assert {sid: d.schedule for sid, d in after.items()} == {sid: d.schedule for sid, d in created.items()}


async def test_an_attribute_registered_with_another_type_stops_setup(
    bare_temporal: WorkflowEnvironment,
) -> None:
    client = bare_temporal.client
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=CLASHING_NAMESPACE,
            search_attributes={"MemberOpsJourney": IndexedValueType.INDEXED_VALUE_TYPE_TEXT},
        )
    )

    with pytest.raises(
        setup.SetupError, match=r"MemberOpsJourney is registered .* as INDEXED_VALUE_TYPE_TEXT"
    ):
        await setup.register_search_attributes(client, CLASHING_NAMESPACE)

    # Nothing half-done: the others were not added either, so a fixed namespace gets all three at once.
    assert set(await custom_attributes(client, CLASHING_NAMESPACE)) & set(setup.wanted_attributes()) == {
        "MemberOpsJourney"
    }


async def test_a_namespace_that_does_not_exist_is_named_not_a_traceback(
    bare_temporal: WorkflowEnvironment,
) -> None:
    finished = await commands.run(
        "setup",
        {
            "TEMPORAL_ADDRESS": bare_temporal.client.service_client.config.target_host,
            "TEMPORAL_NAMESPACE": "no-such-namespace",
            "MEMBEROPS_AUTH_TOKENS": f"{TOKEN_ACME}=acme",
        },
    )
    assert finished.returncode == 1
    assert "namespace 'no-such-namespace'" in finished.stderr, finished.stderr
    assert "Traceback" not in finished.stderr
