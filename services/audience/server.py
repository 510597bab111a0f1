"""Wires the audience service: `python -m services.audience.server`.

The service owns the `audience` schema (definitions and their versions) and reads tagging's data
only through tagging's published read-only views (`tagging_read.*`, tagging migration 0009).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

from memberops.audience.v1 import audience_service_pb2, audience_service_pb2_grpc

from runtime import app
from runtime.config import Settings
from runtime.db import Database
from runtime.erasure import Erasures
from runtime.feed_sequencer import FeedSequencer
from runtime.grpc_server import ServiceBinding
from services.audience import erasure_store
from services.audience.api import AudienceApi, utc_now
from services.audience.bitmaps import BitmapIndex
from services.audience.breakdowns import Breakdowns
from services.audience.definitions import Definitions
from services.audience.dynamic import Memberships
from services.audience.evaluation import Evaluator
from services.audience.exports import DEFAULT_EXPORT_LIMITS, ExportLimits
from services.audience.membership_index import MembershipIndex
from services.audience.read_pool import ReadPool
from services.audience.snapshots import Snapshots

SERVICE = audience_service_pb2.DESCRIPTOR.services_by_name["AudienceService"]


def wire(
    db: Database | None,
    tenants: frozenset[str],
    settings: Settings,
    clock: Callable[[], dt.datetime] = utc_now,
    exports: ExportLimits = DEFAULT_EXPORT_LIMITS,
) -> app.Wiring:
    assert db is not None, "audience owns a schema, so it always has a database"
    index = MembershipIndex(db, tenants, limit=settings.membership_index_limit)
    reads = ReadPool(db, settings.database_read_url, max_size=settings.db_pool_max)
    bitmaps = BitmapIndex(db, tenants) if settings.audience_bitmaps else None
    evaluator = Evaluator(db, index, exports, reads, bitmaps=bitmaps)
    memberships = Memberships(db, evaluator, tenants, clock)
    servicer = AudienceApi(
        Definitions(db, changed=index.forget),
        evaluator,
        Snapshots(db, evaluator),
        Breakdowns(db, evaluator),
        memberships,
        clock=clock,
        exports=exports,
        erasures=Erasures(db, erasure_store.erase),
    )
    binding = ServiceBinding.of(
        SERVICE, audience_service_pb2_grpc.add_AudienceServiceServicer_to_server, servicer
    )
    return app.Wiring(
        [binding],
        background=[
            memberships.run,
            index.run,
            FeedSequencer(db, "audience", tenants).run,
            *([bitmaps.run] if bitmaps is not None else []),
        ],
        closers=[reads.close],
    )


DEFINITION = app.ServiceDefinition(
    name="audience",
    schema="audience",
    migrations_dir=Path(__file__).parent / "migrations",
    wire=wire,
    address=lambda settings: settings.audience_address,
)

if __name__ == "__main__":
    app.main(DEFINITION)
