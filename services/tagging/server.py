"""Wires the tagging service: `python -m services.tagging.server`."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from pathlib import Path

from memberops.tagging.v1 import tagging_service_pb2, tagging_service_pb2_grpc

from services.common import app
from services.common.config import Settings
from services.common.db import Database
from services.common.grpc_server import ServiceBinding
from services.tagging import builtins
from services.tagging.api import TaggingApi, utc_now
from services.tagging.catalog import Catalog
from services.tagging.evaluation import Tagger
from services.tagging.facts import Facts
from services.tagging.feed import Feed
from services.tagging.members import Members
from services.tagging.realtime import RealTimeTags
from services.tagging.stats import Stats

SERVICE = tagging_service_pb2.DESCRIPTOR.services_by_name["TaggingService"]


def wire(
    db: Database | None,
    tenants: frozenset[str],
    settings: Settings,
    clock: Callable[[], dt.datetime] = utc_now,
) -> app.Wiring:
    assert db is not None, "tagging owns a schema, so it always has a database"
    tagger = Tagger(db)
    realtime = RealTimeTags(db, tagger)
    servicer = TaggingApi(
        Members(db, realtime), Facts(db, realtime), Feed(db), Catalog(db), tagger, Stats(db), clock=clock
    )
    binding = ServiceBinding.of(
        SERVICE, tagging_service_pb2_grpc.add_TaggingServiceServicer_to_server, servicer
    )
    return app.Wiring([binding], background=[functools.partial(realtime.run, tenants, clock)])


async def seed_builtins(db: Database, tenants: frozenset[str]) -> None:
    """Gives every configured tenant the built-in catalog it does not have yet."""
    catalog = Catalog(db)
    specs = builtins.definitions()
    for tenant in sorted(tenants):
        await catalog.seed(tenant, specs)


DEFINITION = app.ServiceDefinition(
    name="tagging",
    schema="tagging",
    migrations_dir=Path(__file__).parent / "migrations",
    wire=wire,
    address=lambda settings: settings.tagging_address,
    prepare=seed_builtins,
)

if __name__ == "__main__":
    app.main(DEFINITION)
