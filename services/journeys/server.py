"""Wires the journeys service: `python -m services.journeys.server`.

A gRPC front door beside the worker over the worker's schema `journeys`: journey definitions and
their states, broadcasts and reports. It migrates the schema at start as the worker does (the same
migrations, `workflows/journeys/migrations`); it asks audience and tagging about what definitions
name, with each tenant's token; and it starts in Temporal what state changes and broadcasts set
off (connecting on first use, so it serves definitions while Temporal is down). With
`MEMBEROPS_WECOM_CALLBACK_ADDRESS` set it also takes WeCom's callbacks over HTTP there
(wecom_callbacks.py).
"""

from __future__ import annotations

from memberops.journeys.v1 import journeys_service_pb2, journeys_service_pb2_grpc

from runtime import app
from runtime.config import Settings
from runtime.db import Database
from runtime.grpc_server import ServiceBinding
from runtime.temporal_client import LazyClient
from services.journeys import wecom_callbacks
from services.journeys.anomaly_metrics import AnomalyCounts
from services.journeys.api import JourneyApi
from services.journeys.erasure import Erasures
from services.journeys.journeys import Journeys
from services.journeys.operations import Operations
from services.journeys.peers import Peers
from services.journeys.wecom import WeComConnectors
from services.journeys.wecom_messages import WeComRpcs
from workflows.journeys import store

SERVICE = journeys_service_pb2.DESCRIPTOR.services_by_name["JourneyService"]


def wire(db: Database | None, tenants: frozenset[str], settings: Settings) -> app.Wiring:
    assert db is not None, "journeys owns a schema, so it always has a database"
    peers = Peers(settings)
    journeys = Journeys(db, peers)
    temporal = LazyClient(settings)
    operations = Operations(db, journeys, temporal, settings.temporal_task_queue)
    wecom = WeComRpcs(WeComConnectors(db, peers.dimension, temporal, settings.temporal_task_queue))
    servicer = JourneyApi(
        db, journeys, operations, erasures=Erasures(db, temporal.get), coupons=peers, wecom=wecom
    )
    binding = ServiceBinding.of(
        SERVICE, journeys_service_pb2_grpc.add_JourneyServiceServicer_to_server, servicer
    )
    counts = AnomalyCounts(db, tenants)
    callbacks = wecom_callbacks.loops(db, tenants, settings, temporal)
    return app.Wiring([binding], background=[counts.run, *callbacks], closers=[peers.close])


DEFINITION = app.ServiceDefinition(
    name="journeys",
    schema=store.SCHEMA,
    migrations_dir=store.MIGRATIONS,
    wire=wire,
    address=lambda settings: settings.journeys_address,
)

if __name__ == "__main__":
    app.main(DEFINITION)
