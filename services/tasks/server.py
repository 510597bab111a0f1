"""Wires the tasks service: `python -m services.tasks.server`.

The service owns the `tasks` schema: the points ledger (accounts, entries, lots), the rewards
catalog and redemptions, task definitions and what members did towards them. Members are the
caller's ids: tasks does not own them; it asks tagging whether one exists and the audience service
whether one is in a task's audience, over gRPC with each tenant's token.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

from memberops.tasks.v1 import tasks_service_pb2, tasks_service_pb2_grpc

from runtime import app
from runtime.config import Settings
from runtime.db import Database
from runtime.erasure import Erasures
from runtime.feed_sequencer import FeedSequencer
from runtime.grpc_server import ServiceBinding
from runtime.temporal_client import LazyClient
from services.tasks import erasure_store
from services.tasks.api import TasksApi, TaskServices, utc_now
from services.tasks.badges.badges import Badges
from services.tasks.coupons.api import CouponServices
from services.tasks.coupons.catalog import CouponTemplates
from services.tasks.coupons.member_coupons import Coupons
from services.tasks.coupons.violations import CouponViolations
from services.tasks.daily_kpis import DailyKpiReader
from services.tasks.economy.level_benefits import LevelBenefits
from services.tasks.economy.order_earning import OrderEarningRules
from services.tasks.feed.follower import FeedFollower
from services.tasks.issuances.issuances import Issuances
from services.tasks.issuances.workflow_starts import WorkflowStarts
from services.tasks.levels.levels import Levels, seed
from services.tasks.levels.publisher import LevelPublisher
from services.tasks.peers import Peers
from services.tasks.points.leaderboards import Leaderboards
from services.tasks.points.ledger import Ledger
from services.tasks.points.rewards import Rewards
from services.tasks.tasks.definitions import TaskDefinitions
from services.tasks.tasks.invites import Invites
from services.tasks.tasks.member_tasks import MemberTasks
from services.tasks.tasks.participation import Participation
from services.tasks.tasks.shares import Shares
from services.tasks.tasks.signin import SignIns

SERVICE = tasks_service_pb2.DESCRIPTOR.services_by_name["TasksService"]


def wire(
    db: Database | None,
    tenants: frozenset[str],
    settings: Settings,
    clock: Callable[[], dt.datetime] = utc_now,
) -> app.Wiring:
    assert db is not None, "tasks owns a schema, so it always has a database"
    peers = Peers(settings)
    participation = Participation(peers)
    definitions = TaskDefinitions(db, peers)
    coupon_templates = CouponTemplates(db, peers)
    tasks = TaskServices(
        definitions=definitions,
        member_tasks=MemberTasks(db, definitions, participation),
        sign_ins=SignIns(db, definitions, participation),
        shares=Shares(db, definitions, participation),
        invites=Invites(db, definitions, participation),
        levels=Levels(db),
        coupons=CouponServices(coupon_templates, Coupons(db, coupon_templates, peers, peers)),
        coupon_issuances=Issuances(
            db, peers, peers, WorkflowStarts(LazyClient(settings), settings.temporal_task_queue)
        ),
        coupon_violations=CouponViolations(db),
        order_earning=OrderEarningRules(db),
        level_benefits=LevelBenefits(db, Levels(db), peers),
        badges=Badges(db),
    )
    follower = FeedFollower(db, peers, peers, tenants, clock)
    publisher = LevelPublisher(db, peers, tenants)
    servicer = TasksApi(
        Ledger(db, participation),
        Rewards(db, participation, peers),
        Leaderboards(db),
        tasks,
        clock=clock,
        erasures=Erasures(db, erasure_store.erase, forget=peers.forget),
        daily_kpis=DailyKpiReader(db),
    )
    binding = ServiceBinding.of(SERVICE, tasks_service_pb2_grpc.add_TasksServiceServicer_to_server, servicer)
    return app.Wiring(
        [binding],
        background=[follower.run, publisher.run, FeedSequencer(db, "tasks", tenants).run],
        closers=[peers.close],
    )


DEFINITION = app.ServiceDefinition(
    name="tasks",
    schema="tasks",
    migrations_dir=Path(__file__).parent / "migrations",
    wire=wire,
    address=lambda settings: settings.tasks_address,
    prepare=seed,
)

if __name__ == "__main__":
    app.main(DEFINITION)
