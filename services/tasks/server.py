"""Wires the tasks service: `python -m services.tasks.server`.

The service owns the `tasks` schema: the points ledger (accounts, entries, lots), the rewards
catalog and redemptions. Members are the
caller's ids; tasks neither owns them nor asks tagging about them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

from memberops.tasks.v1 import tasks_service_pb2, tasks_service_pb2_grpc

from services.common import app
from services.common.db import Database
from services.common.grpc_server import ServiceBinding
from services.tasks.api import TasksApi, utc_now
from services.tasks.leaderboards import Leaderboards
from services.tasks.ledger import Ledger
from services.tasks.rewards import Rewards

SERVICE = tasks_service_pb2.DESCRIPTOR.services_by_name["TasksService"]


def wire(
    db: Database | None, tenants: frozenset[str], clock: Callable[[], dt.datetime] = utc_now
) -> app.Wiring:
    assert db is not None, "tasks owns a schema, so it always has a database"
    servicer = TasksApi(Ledger(db), Rewards(db), Leaderboards(db), clock=clock)
    binding = ServiceBinding.of(SERVICE, tasks_service_pb2_grpc.add_TasksServiceServicer_to_server, servicer)
    return app.Wiring([binding])


DEFINITION = app.ServiceDefinition(
    name="tasks",
    schema="tasks",
    migrations_dir=Path(__file__).parent / "migrations",
    wire=wire,
    address=lambda settings: settings.tasks_address,
)

if __name__ == "__main__":
    app.main(DEFINITION)
