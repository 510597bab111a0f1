"""Wires the tagging service: `python -m services.tagging.server`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from memberops.tagging.v1 import tagging_service_pb2, tagging_service_pb2_grpc

from services.common import app
from services.common.db import Database
from services.common.grpc_server import ServiceBinding
from services.tagging import builtins
from services.tagging.api import TaggingApi
from services.tagging.catalog import Catalog
from services.tagging.evaluation import Tagger
from services.tagging.facts import Facts
from services.tagging.feed import Feed
from services.tagging.members import Members
from services.tagging.stats import Stats

SERVICE = tagging_service_pb2.DESCRIPTOR.services_by_name["TaggingService"]


def bindings(db: Database | None) -> Sequence[ServiceBinding]:
    assert db is not None, "tagging owns a schema, so it always has a database"
    tagger = Tagger(db)
    servicer = TaggingApi(Members(db, tagger), Facts(db, tagger), Feed(db), Catalog(db), tagger, Stats(db))
    return [
        ServiceBinding.of(SERVICE, tagging_service_pb2_grpc.add_TaggingServiceServicer_to_server, servicer)
    ]


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
    bindings=bindings,
    address=lambda settings: settings.tagging_address,
    prepare=seed_builtins,
)

if __name__ == "__main__":
    app.main(DEFINITION)
