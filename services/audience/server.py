"""Wires the audience service: `python -m services.audience.server`.

The service has no RPCs and no tables yet; it runs so deployments, health checks and clients can be
wired up now, and its issue fills it in.
"""

from __future__ import annotations

from collections.abc import Sequence

from memberops.audience.v1 import audience_service_pb2, audience_service_pb2_grpc

from services.common import app
from services.common.db import Database
from services.common.grpc_server import ServiceBinding

SERVICE = audience_service_pb2.DESCRIPTOR.services_by_name["AudienceService"]


def bindings(db: Database | None) -> Sequence[ServiceBinding]:
    servicer = audience_service_pb2_grpc.AudienceServiceServicer()
    return [
        ServiceBinding.of(SERVICE, audience_service_pb2_grpc.add_AudienceServiceServicer_to_server, servicer)
    ]


DEFINITION = app.ServiceDefinition(
    name="audience",
    schema=None,
    migrations_dir=None,
    wire=lambda db, _tenants: app.Wiring(bindings(db)),
    address=lambda settings: settings.audience_address,
)

if __name__ == "__main__":
    app.main(DEFINITION)
