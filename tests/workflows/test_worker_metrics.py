"""A worker's /metrics: its journeys (enrolments, sends by channel and outcome), the dispatcher's
feed lag and the Temporal SDK's own metrics, through a Runtime whose metric buffer the endpoint
drains. Values are compared before and after, never against a duration."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from runtime import metrics, temporal_metrics
from runtime.config import Settings
from runtime.db import Database
from tests.conftest import TENANT_ACME
from tests.test_metrics import Samples, scrape, value
from tests.waiting import eventually
from tests.workflows.journey_helpers import activate, journey, member_in, seed_member
from tests.workflows.test_dispatcher import dispatcher, following
from workflows.journeys import store
from workflows.journeys.definition import Send, Step
from workflows.worker import Resources, build_worker


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = metrics.serve("127.0.0.1:0")
    yield f"http://127.0.0.1:{server.port}"
    server.close()


async def test_a_send_moves_the_journey_dispatcher_and_temporal_metrics(
    endpoint: str,
    dev_server_env: WorkflowEnvironment,
    worker_settings: Settings,
    resources: Resources,
    journeys_db: Database,
) -> None:
    client = await Client.connect(
        dev_server_env.client.service_client.config.target_host,
        namespace=dev_server_env.client.namespace,
        runtime=temporal_metrics.runtime(),
    )
    definition = journey(Step(id="hello", send=Send(template="hello", channel="sms")))
    await store.put_definition(journeys_db, TENANT_ACME, definition)
    await activate(journeys_db, TENANT_ACME, definition.key)
    before = await scrape(endpoint)
    sent = {"tenant": TENANT_ACME, "journey": definition.key, "channel": "sms", "outcome": "sent"}

    def dispatched(samples: Samples, feed: str) -> float:
        labels = {"consumer": "dispatcher", "feed": feed, "tenant": TENANT_ACME}
        return value(samples, "memberops_feed_entries_applied_total", **labels)

    async with (
        build_worker(client, worker_settings, resources),
        dispatcher(dev_server_env, worker_settings, journeys_db, definition.key) as d,
    ):
        await following(journeys_db, d.id)
        # Registering enters the journey, whose one step sends an SMS.
        await seed_member(resources.tagging, member_in(definition, holdout=False))

        async def delivered() -> Samples | None:
            now = await scrape(endpoint)
            return now if value(now, "memberops_journey_sends_total", **sent) else None

        after = await eventually(delivered, "the journey's SMS counted as sent")

    enrolled = {"tenant": TENANT_ACME, "journey": definition.key}
    assert value(after, "memberops_journey_enrolments_total", arm="treated", **enrolled) == 1
    assert value(after, "memberops_journey_enrolments_total", arm="holdout", **enrolled) == 0
    assert value(after, "memberops_journey_sends_total", **sent) == 1
    assert dispatched(after, "tagging") > dispatched(before, "tagging")
    for feed in ("tagging", "audience"):
        lag = [
            v
            for (name, labels), v in after.items()
            if name == "memberops_feed_lag_seconds"
            and {("consumer", "dispatcher"), ("feed", feed), ("tenant", TENANT_ACME)} <= labels
        ]
        assert len(lag) == 1 and lag[0] >= 0, feed
    # The SDK's own: the journey's activities ran on this worker, timed by Temporal.
    activities = "temporal_activity_execution_latency_seconds_count"
    assert value(after, activities, task_queue=worker_settings.temporal_task_queue) > value(
        before, activities, task_queue=worker_settings.temporal_task_queue
    )
