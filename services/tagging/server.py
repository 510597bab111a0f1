"""Wires the tagging service: `python -m services.tagging.server`."""

from __future__ import annotations

import datetime as dt
import functools
import os
from collections.abc import Callable
from pathlib import Path

from memberops.tagging.v1 import tagging_service_pb2, tagging_service_pb2_grpc

from runtime import app
from runtime.config import Settings, env_number
from runtime.db import Database
from runtime.feed_sequencer import FeedSequencer
from runtime.grpc_server import ServiceBinding
from runtime.temporal_client import LazyClient
from services.tagging import builtins
from services.tagging.api import TaggingApi, utc_now
from services.tagging.backfill_refresh import BackfillRefresh
from services.tagging.catalog import Catalog
from services.tagging.daily_kpis import DailyKpis
from services.tagging.erasure import Erasures
from services.tagging.erasure_peers import ErasurePeers, addresses
from services.tagging.evaluation import Tagger
from services.tagging.fact_imports import FactImports
from services.tagging.facts import Facts
from services.tagging.feed import MAX_STREAMS_PER_TENANT, Feed
from services.tagging.history_rebuilds import HistoryRebuilds
from services.tagging.member_orders import MemberOrders
from services.tagging.member_search import MemberSearch
from services.tagging.members import Members
from services.tagging.realtime import RealTimeTags
from services.tagging.stats import Stats

SERVICE = tagging_service_pb2.DESCRIPTOR.services_by_name["TaggingService"]
# Open StreamFeed calls one tenant may have (default feed.MAX_STREAMS_PER_TENANT).
FEED_STREAMS_ENV = "MEMBEROPS_TAGGING_FEED_STREAMS_PER_TENANT"


def wire(
    db: Database | None,
    tenants: frozenset[str],
    settings: Settings,
    clock: Callable[[], dt.datetime] = utc_now,
    peer_address: Callable[[str], str] | None = None,
) -> app.Wiring:
    """`peer_address`: where EraseMember finds tasks, journeys and audience (default: the settings)."""
    assert db is not None, "tagging owns a schema, so it always has a database"
    tagger = Tagger(db)
    streams = env_number(os.environ, FEED_STREAMS_ENV, MAX_STREAMS_PER_TENANT, int)
    realtime = RealTimeTags(db, tagger)
    feed = Feed(db, streams)
    peers = ErasurePeers(settings.token_for_tenant, peer_address or addresses(settings))
    servicer = TaggingApi(
        Members(db, realtime, BackfillRefresh(db, tagger)),
        Facts(db, realtime),
        feed,
        Catalog(db),
        tagger,
        Stats(db),
        FactImports(db, tagger),
        clock=clock,
        history_rebuilds=HistoryRebuilds(db, LazyClient(settings), settings.temporal_task_queue),
        erasures=Erasures(db, tagger, peers),
        member_search=MemberSearch(db),
        member_orders=MemberOrders(db),
        daily_kpis=DailyKpis(db),
    )
    binding = ServiceBinding.of(
        SERVICE, tagging_service_pb2_grpc.add_TaggingServiceServicer_to_server, servicer
    )
    return app.Wiring(
        [binding],
        background=[
            functools.partial(realtime.run, tenants, clock),
            FeedSequencer(db, "tagging", tenants).run,
        ],
        closers=[peers.close],
    )


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
