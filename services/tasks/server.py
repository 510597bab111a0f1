"""Wires the tasks service: `python -m services.tasks.server`.

The service has no RPCs and no tables yet; it runs so deployments, health checks and clients can be
wired up now, and its issue fills it in.
"""

from __future__ import annotations

from collections.abc import Sequence

from memberops.tasks.v1 import tasks_service_pb2, tasks_service_pb2_grpc

from services.common import app
from services.common.db import Database
from services.common.grpc_server import ServiceBinding

SERVICE = tasks_service_pb2.DESCRIPTOR.services_by_name["TasksService"]


def bindings(db: Database | None) -> Sequence[ServiceBinding]:
    servicer = tasks_service_pb2_grpc.TasksServiceServicer()
    return [ServiceBinding.of(SERVICE, tasks_service_pb2_grpc.add_TasksServiceServicer_to_server, servicer)]


DEFINITION = app.ServiceDefinition(
    name="tasks",
    schema=None,
    migrations_dir=None,
    wire=lambda db, _tenants: app.Wiring(bindings(db)),
    address=lambda settings: settings.tasks_address,
)

if __name__ == "__main__":
    app.main(DEFINITION)
