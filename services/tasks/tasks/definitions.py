"""Task definitions: what each kind of task asks, its limits and budget, validated and versioned.

A definition is plain data (`Definition`), stored as JSON per version; the current version is what
members act against. The task id is the natural key: creating the same content again returns it,
other content is ALREADY_EXISTS. An update stores a new version unless the content is unchanged
(so a retried update is harmless); `expected_version` guards against lost updates; the kind never
changes, and the budget never drops below what the task already paid or reserved.

The budget is the task's allowance (services/tasks/allowance/), created with the task: its total is
`budget_points`, or UNLIMITED without a budget, so what a task used is always counted. An update or
a retirement holds every shard of it before it commits, so a completion that takes from it after
sees the new version or state (completions.grant_all checks it after its take).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from runtime import page_tokens, zones
from runtime.db import Connection, Database
from runtime.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Violations,
)
from runtime.tagging_feed import EVENT_KINDS
from services.tasks import time_span
from services.tasks.allowance import allowance
from services.tasks.badges import badges
from services.tasks.points import ledger
from services.tasks.points.ledger import MAX_AMOUNT, Expiry, ExpiryPolicy
from services.tasks.tasks import definition_store

TASK_ID = re.compile(r"^[a-z][a-z0-9_-]{0,62}\Z")
AUDIENCE_ID = re.compile(r"^[a-z][a-z0-9_-]{0,62}\Z")
MAX_DISPLAY_NAME = 128
MAX_VALIDITY = dt.timedelta(days=3650)
MAX_STREAK_TABLE = 31
MAX_MAKEUPS = 31
MAX_LIMIT = 10_000
MAX_TARGET = 10**12
MAX_FILTER_VALUES = 100
MAX_TEXT = 64
MAX_WINDOW_DAYS = 3650
MAX_TIMES = 10_000
MAX_CLAWBACK_DAYS = 365
MAX_BUDGET = 10**15
MAX_MILESTONES = 31
MAX_MILESTONE_DAYS = 3650
DEFAULT_PAGE_SIZE = 100
CACHE_SECONDS = 2.0
MAX_PAGE_SIZE = 1000


class Kind(enum.IntEnum):
    """The numbers of memberops.tasks.v1.TaskKind."""

    SIGN_IN = 1
    INVITE = 2
    SHARE = 3
    PURCHASE = 4
    PROFILE = 5
    VISIT = 6
    EVENT = 7


class State(enum.IntEnum):
    ACTIVE = 1
    RETIRED = 2


class Cycle(enum.IntEnum):
    """The numbers of memberops.tasks.v1.TaskCycle."""

    NONE = 0
    WEEKLY = 1
    MONTHLY = 2


# The first day of the one cycle of a task without cycles (its whole validity period).
NO_CYCLE = dt.date(1, 1, 1)
_AFTER_ALL = dt.date(9999, 12, 31)
# Kinds whose progress and total limit may repeat per cycle: purchase and event progress, and
# completions counted per member (shares). A streak (sign-in) runs across weeks and months and has
# its own daily rhythm; invites count invitations (not completions); profile and visit tasks
# complete once per member.
CYCLED = frozenset({Kind.PURCHASE, Kind.EVENT, Kind.SHARE})


class InviteTrigger(enum.IntEnum):
    REGISTER = 1
    FIRST_ORDER = 2


class Measure(enum.IntEnum):
    ITEMS = 1
    ORDERS = 2
    AMOUNT = 3


class ProfileField(enum.IntEnum):
    GENDER = 1
    BIRTHDAY = 2
    CITY = 3
    NICKNAME = 4
    PHONE = 5
    EMAIL = 6


@dataclass(frozen=True)
class StreakMilestone:
    """Reaching `streak_days` consecutive days awards `badge` (`badges/{badge_id}`)."""

    streak_days: int
    badge: str


@dataclass(frozen=True)
class SignInSpec:
    streak_rewards: tuple[int, ...]
    makeups_per_month: int = 0
    milestones: tuple[StreakMilestone, ...] = ()

    def points_for(self, streak_day: int) -> int:
        """Points for day `streak_day` (1-based) of a streak: later days earn the table's last entry."""
        return self.streak_rewards[min(streak_day, len(self.streak_rewards)) - 1]


@dataclass(frozen=True)
class InviteSpec:
    trigger: int  # InviteTrigger
    invitee_points: int = 0
    # FIRST_ORDER only: days after the qualifying order's payment in which a full refund takes
    # the invite back (0: 30).
    clawback_window_days: int = 0


@dataclass(frozen=True)
class ShareSpec:
    pass


@dataclass(frozen=True)
class PurchaseSpec:
    measure: int  # Measure
    target: int
    categories: tuple[str, ...] = ()
    brands: tuple[str, ...] = ()
    skus: tuple[str, ...] = ()
    window_days: int = 0
    # Whether orders loaded by an import (backfilled feed entries) count; off, they are history.
    reward_backfilled_orders: bool = False

    @property
    def filtered(self) -> bool:
        return bool(self.categories or self.brands or self.skus)

    def matches(self, category: str, brand: str, sku: str) -> bool:
        """Whether an order line counts: it matches every non-empty filter."""
        return (
            (not self.categories or category in self.categories)
            and (not self.brands or brand in self.brands)
            and (not self.skus or sku in self.skus)
        )


@dataclass(frozen=True)
class ProfileSpec:
    required_fields: tuple[int, ...]  # ProfileField


@dataclass(frozen=True)
class VisitSpec:
    page: str


@dataclass(frozen=True)
class EventSpec:
    event_kind: int
    times: int
    sku: str = ""
    category: str = ""
    brand: str = ""
    channel: str = ""


Spec = SignInSpec | InviteSpec | ShareSpec | PurchaseSpec | ProfileSpec | VisitSpec | EventSpec

KIND_OF: Mapping[type[Any], Kind] = {
    SignInSpec: Kind.SIGN_IN,
    InviteSpec: Kind.INVITE,
    ShareSpec: Kind.SHARE,
    PurchaseSpec: Kind.PURCHASE,
    ProfileSpec: Kind.PROFILE,
    VisitSpec: Kind.VISIT,
    EventSpec: Kind.EVENT,
}
SPEC_OF: Mapping[Kind, type[Any]] = {kind: spec for spec, kind in KIND_OF.items()}
# Spec field names as the API names them (the `Task.spec` oneof), for violation paths.
SPEC_FIELD: Mapping[Kind, str] = {
    Kind.SIGN_IN: "sign_in",
    Kind.INVITE: "invite",
    Kind.SHARE: "share",
    Kind.PURCHASE: "purchase",
    Kind.PROFILE: "profile",
    Kind.VISIT: "visit",
    Kind.EVENT: "event",
}
# Kinds whose progress comes from tagging's feed and is counted towards a target.
COUNTED = frozenset({Kind.PURCHASE, Kind.PROFILE, Kind.VISIT, Kind.EVENT})
# Kinds that complete at most once per member whatever the limits say.
ONCE = frozenset({Kind.PROFILE, Kind.VISIT})


@dataclass(frozen=True)
class Limits:
    per_day: int = 0
    total: int = 0


@dataclass(frozen=True)
class Definition:
    """A task as its author defines it (everything a version stores)."""

    task_id: str
    spec: Spec | None
    start_time: dt.datetime | None
    end_time: dt.datetime | None
    display_name: str = ""
    time_zone: str = ""
    reward_points: int = 0
    expiry: Expiry = field(default_factory=lambda: Expiry(ExpiryPolicy.NEVER))
    limits: Limits = field(default_factory=Limits)
    audience_id: str = ""
    budget_points: int = 0
    claim_required: bool = False
    # `badges/{badge_id}` awarded by the member's first completion, or "".
    badge: str = ""
    cycle: int = Cycle.NONE

    @property
    def kind(self) -> Kind:
        assert self.spec is not None
        return KIND_OF[type(self.spec)]

    @property
    def zone(self) -> dt.tzinfo:
        return zones.zone(self.time_zone, Violations(), "time_zone")

    def day(self, at: dt.datetime) -> dt.date:
        """The task's calendar day of `at`."""
        return zones.local_day(at, self.zone)

    def valid_at(self, at: dt.datetime) -> bool:
        assert self.start_time is not None and self.end_time is not None
        return self.start_time <= at < self.end_time

    def target(self) -> int:
        """What one completion of a counted task needs."""
        spec = self.spec
        if isinstance(spec, PurchaseSpec):
            return spec.target
        if isinstance(spec, EventSpec):
            return spec.times
        return 1

    def cycle_of(self, day: dt.date) -> tuple[dt.date, dt.date]:
        """The first day of the cycle the task's calendar day `day` falls in, and the first day after
        it: the Monday of its week, the 1st of its month, or (without cycles) all of time."""
        if self.cycle == Cycle.WEEKLY:
            start = day - dt.timedelta(days=day.weekday())
            return start, start + dt.timedelta(days=7)
        if self.cycle == Cycle.MONTHLY:
            start = day.replace(day=1)
            return start, (start + dt.timedelta(days=32)).replace(day=1)
        return NO_CYCLE, _AFTER_ALL

    def total_limit(self) -> int:
        """Completions per member in all (0: no limit)."""
        return 1 if self.kind in ONCE else self.limits.total


@dataclass(frozen=True)
class Task:
    definition: Definition
    state: State
    version: int
    budget_used: int
    create_time: dt.datetime
    update_time: dt.datetime

    @property
    def task_id(self) -> str:
        return self.definition.task_id

    def budget_left(self) -> int | None:
        """Points the budget can still pay; None without a budget."""
        budget = self.definition.budget_points
        return None if budget == 0 else budget - self.budget_used


class Audiences(Protocol):
    async def audience_exists(self, tenant_id: str, audience_id: str) -> bool: ...


# --- validation ----------------------------------------------------------------------------------


def validate(d: Definition, v: Violations | None = None) -> None:
    """Every violation of a definition at once (with those already in `v`), named by its path in
    `CreateTaskRequest`."""
    v = Violations() if v is None else v
    if not TASK_ID.match(d.task_id):
        v.add("task.task_id", "must be 1-63 characters: a lower-case letter, then a-z, 0-9, _ or -")
    if len(d.display_name) > MAX_DISPLAY_NAME:
        v.add("task.display_name", f"must be at most {MAX_DISPLAY_NAME} characters")
    _validity(d, v)
    zones.zone(d.time_zone, v, "task.time_zone")
    if d.spec is None:
        v.add("task.spec", "set exactly one of " + ", ".join(SPEC_FIELD.values()))
    else:
        _spec(d, v)
        if d.kind is Kind.SIGN_IN:
            if d.reward_points:
                v.add("task.reward_points", "is not used by sign-in tasks: set sign_in.streak_rewards")
        else:
            ledger.check_amount(v, "task.reward_points", d.reward_points)
        _limits(d, v)
    if d.audience_id and not AUDIENCE_ID.match(d.audience_id):
        v.add("task.eligibility_audience", "must be a resource name of the form audiences/{audience_id}")
    if not 0 <= d.budget_points <= MAX_BUDGET:
        v.add("task.budget_points", f"must be 0 (no limit) to {MAX_BUDGET:,}")
    if d.badge:
        badges.check_name(v, "task.badge", d.badge)
    if d.cycle not in set(Cycle):
        v.add("task.cycle", "must be TASK_CYCLE_UNSPECIFIED, TASK_CYCLE_WEEKLY or TASK_CYCLE_MONTHLY")
    elif d.cycle and d.spec is not None and d.kind not in CYCLED:
        v.add(
            "task.cycle",
            f"a {d.kind.name.lower()} task does not repeat in cycles (only purchase, event and share tasks)",
        )
    v.raise_if_any()


def _validity(d: Definition, v: Violations) -> None:
    """Set, in order, at most MAX_VALIDITY long, and inside `time_span`'s span (days, zones and windows
    are computed from these, and must not overflow)."""
    in_span = True
    for name, value in (("start_time", d.start_time), ("end_time", d.end_time)):
        if value is None:
            v.add(f"task.{name}", "is required")
        elif not time_span.within(value, v, f"task.{name}"):
            in_span = False
    if in_span and d.start_time is not None and d.end_time is not None:
        if d.end_time <= d.start_time:
            v.add("task.end_time", "must be after start_time")
        elif d.end_time - d.start_time > MAX_VALIDITY:
            v.add("task.end_time", "must be at most 3650 days after start_time")


def _sign_in(spec: SignInSpec, v: Violations, path: str) -> None:
    if not 1 <= len(spec.streak_rewards) <= MAX_STREAK_TABLE:
        v.add(f"{path}.streak_rewards", f"must hold 1-{MAX_STREAK_TABLE} entries (points for day 1, 2, …)")
    for i, points in enumerate(spec.streak_rewards[:MAX_STREAK_TABLE]):
        ledger.check_amount(v, f"{path}.streak_rewards[{i}]", points)
    if not 0 <= spec.makeups_per_month <= MAX_MAKEUPS:
        v.add(f"{path}.makeups_per_month", f"must be 0-{MAX_MAKEUPS}")
    if len(spec.milestones) > MAX_MILESTONES:
        v.add(f"{path}.milestones", f"must hold at most {MAX_MILESTONES} milestones")
    seen: set[int] = set()
    for i, m in enumerate(spec.milestones[:MAX_MILESTONES]):
        if not 2 <= m.streak_days <= MAX_MILESTONE_DAYS:
            v.add(f"{path}.milestones[{i}].streak_days", f"must be 2-{MAX_MILESTONE_DAYS}")
        elif m.streak_days in seen:
            v.add(f"{path}.milestones[{i}].streak_days", "must differ from the other milestones'")
        seen.add(m.streak_days)
        badges.check_name(v, f"{path}.milestones[{i}].badge", m.badge)


def _invite(spec: InviteSpec, v: Violations, path: str) -> None:
    if spec.trigger not in set(InviteTrigger):
        v.add(f"{path}.trigger", "must be INVITE_TRIGGER_REGISTER or INVITE_TRIGGER_FIRST_ORDER")
    if not 0 <= spec.invitee_points <= MAX_AMOUNT:
        v.add(f"{path}.invitee_points", f"must be 0-{MAX_AMOUNT:,}")
    if not 0 <= spec.clawback_window_days <= MAX_CLAWBACK_DAYS:
        v.add(f"{path}.clawback_window_days", f"must be 0-{MAX_CLAWBACK_DAYS}")
    elif spec.clawback_window_days and spec.trigger != InviteTrigger.FIRST_ORDER:
        v.add(f"{path}.clawback_window_days", "is only for INVITE_TRIGGER_FIRST_ORDER")


def _purchase(spec: PurchaseSpec, v: Violations, path: str) -> None:
    if spec.measure not in set(Measure):
        v.add(f"{path}.measure", "must be ITEMS, ORDERS or AMOUNT")
    if not 1 <= spec.target <= MAX_TARGET:
        v.add(f"{path}.target", f"must be 1 to {MAX_TARGET:,}")
    for name in ("categories", "brands", "skus"):
        values: Sequence[str] = getattr(spec, name)
        if len(values) > MAX_FILTER_VALUES:
            v.add(f"{path}.{name}", f"must hold at most {MAX_FILTER_VALUES} values")
        for i, value in enumerate(values[:MAX_FILTER_VALUES]):
            if not 1 <= len(value) <= MAX_TEXT:
                v.add(f"{path}.{name}[{i}]", f"must be 1-{MAX_TEXT} characters")
    if not 0 <= spec.window_days <= MAX_WINDOW_DAYS:
        v.add(f"{path}.window_days", f"must be 0 (the validity period) to {MAX_WINDOW_DAYS}")


def _profile(spec: ProfileSpec, v: Violations, path: str) -> None:
    if not 1 <= len(spec.required_fields) <= len(ProfileField):
        v.add(f"{path}.required_fields", f"must name 1-{len(ProfileField)} fields")
    elif len(set(spec.required_fields)) != len(spec.required_fields):
        v.add(f"{path}.required_fields", "must not repeat a field")
    for i, wanted in enumerate(spec.required_fields):
        if wanted not in set(ProfileField):
            v.add(f"{path}.required_fields[{i}]", "must be a ProfileField other than UNSPECIFIED")


def _visit(spec: VisitSpec, v: Violations, path: str) -> None:
    if not 1 <= len(spec.page) <= MAX_TEXT:
        v.add(f"{path}.page", f"must be 1-{MAX_TEXT} characters")


def _event(spec: EventSpec, v: Violations, path: str) -> None:
    if spec.event_kind not in EVENT_KINDS:
        v.add(f"{path}.event_kind", "must be an EventKind other than UNSPECIFIED")
    if not 1 <= spec.times <= MAX_TIMES:
        v.add(f"{path}.times", f"must be 1-{MAX_TIMES:,}")
    for name in ("sku", "category", "brand", "channel"):
        if len(getattr(spec, name)) > MAX_TEXT:
            v.add(f"{path}.{name}", f"must be at most {MAX_TEXT} characters")


def _spec(d: Definition, v: Violations) -> None:
    spec, path = d.spec, f"task.{SPEC_FIELD[d.kind]}"
    if isinstance(spec, SignInSpec):
        _sign_in(spec, v, path)
    elif isinstance(spec, InviteSpec):
        _invite(spec, v, path)
    elif isinstance(spec, PurchaseSpec):
        _purchase(spec, v, path)
    elif isinstance(spec, ProfileSpec):
        _profile(spec, v, path)
    elif isinstance(spec, VisitSpec):
        _visit(spec, v, path)
    elif isinstance(spec, EventSpec):
        _event(spec, v, path)


def _limits(d: Definition, v: Violations) -> None:
    limits = d.limits
    for name in ("per_day", "total"):
        if not 0 <= getattr(limits, name) <= MAX_LIMIT:
            v.add(f"task.limits.{name}", f"must be 0 (no limit) to {MAX_LIMIT:,}")
    if d.kind is Kind.SIGN_IN and limits.per_day > 1:
        v.add("task.limits.per_day", "a sign-in task completes at most once a day")
    if d.kind in ONCE and (limits.per_day or limits.total):
        v.add("task.limits", f"a {d.kind.name.lower()} task completes once per member; leave limits unset")


# --- storage form --------------------------------------------------------------------------------


def to_body(d: Definition) -> dict[str, Any]:
    """The JSON a version stores: plain values only, so it reads back as the same definition."""
    assert d.spec is not None and d.start_time is not None and d.end_time is not None
    return {
        "kind": int(d.kind),
        "spec": _spec_body(d.spec),
        "display_name": d.display_name,
        "start_time": d.start_time.isoformat(),
        "end_time": d.end_time.isoformat(),
        "time_zone": d.time_zone,
        "reward_points": d.reward_points,
        "expiry": {"policy": int(d.expiry.policy), "days": d.expiry.days},
        "limits": dataclasses.asdict(d.limits),
        "audience_id": d.audience_id,
        "budget_points": d.budget_points,
        "claim_required": d.claim_required,
        # Only when set, so the bodies (and content hashes) of tasks stored before badges stay.
        **({"badge": d.badge} if d.badge else {}),
        **({"cycle": d.cycle} if d.cycle else {}),
    }


def _spec_body(spec: Spec) -> dict[str, Any]:
    """The spec's fields; a purchase task's `reward_backfilled_orders` and an invite's
    `clawback_window_days` only when set, so the bodies (and content hashes) of tasks stored
    before the options existed stay what they were."""
    body = dataclasses.asdict(spec)
    if isinstance(spec, PurchaseSpec) and not spec.reward_backfilled_orders:
        del body["reward_backfilled_orders"]
    if isinstance(spec, InviteSpec) and not spec.clawback_window_days:
        del body["clawback_window_days"]
    if isinstance(spec, SignInSpec) and not spec.milestones:
        del body["milestones"]
    return body


def from_body(task_id: str, body: Mapping[str, Any]) -> Definition:
    kind = Kind(body["kind"])
    raw = dict(body["spec"])
    # JSON has lists where the specs keep tuples.
    raw.update({name: tuple(value) for name, value in raw.items() if isinstance(value, list)})
    if kind is Kind.SIGN_IN:
        raw["milestones"] = tuple(StreakMilestone(**m) for m in raw.get("milestones", ()))
    return Definition(
        task_id=task_id,
        spec=SPEC_OF[kind](**raw),
        display_name=body["display_name"],
        start_time=dt.datetime.fromisoformat(body["start_time"]),
        end_time=dt.datetime.fromisoformat(body["end_time"]),
        time_zone=body["time_zone"],
        reward_points=body["reward_points"],
        expiry=Expiry(ExpiryPolicy(body["expiry"]["policy"]), body["expiry"]["days"]),
        limits=Limits(**body["limits"]),
        audience_id=body["audience_id"],
        budget_points=body["budget_points"],
        claim_required=body["claim_required"],
        badge=body.get("badge", ""),
        cycle=body.get("cycle", Cycle.NONE),
    )


def content_hash(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def task_from_row(row: definition_store.TaskRow) -> Task:
    return Task(
        definition=from_body(row.task_id, row.body),
        state=State(row.state),
        version=row.version,
        budget_used=row.budget_used,
        create_time=row.create_time,
        update_time=row.update_time,
    )


async def _check_badges(conn: Connection, d: Definition) -> None:
    """INVALID_ARGUMENT naming each badge the task names that does not exist (badges are never
    deleted, so one that exists now still will)."""
    names = {"task.badge": d.badge} if d.badge else {}
    if isinstance(d.spec, SignInSpec):
        names.update(
            {f"task.sign_in.milestones[{i}].badge": m.badge for i, m in enumerate(d.spec.milestones)}
        )
    if names:
        await badges.check_exist(conn, names)


def _total(d: Definition) -> int:
    """The allowance of a task's budget."""
    return d.budget_points or allowance.UNLIMITED


def task_id_from_name(name: str, path: str) -> str:
    task_id = name.removeprefix("tasks/")
    if not name.startswith("tasks/") or not TASK_ID.match(task_id):
        raise InvalidArgument.field(path, "must be a resource name of the form tasks/{task_id}")
    return task_id


# --- the definitions -----------------------------------------------------------------------------


class TaskDefinitions:
    def __init__(self, db: Database, audiences: Audiences) -> None:
        self._db = db
        self._audiences = audiences
        # Definitions member calls read, for a moment: a completion still checks the version and
        # state it was decided on when it reserves the budget (StaleTask otherwise).
        self._recent: dict[tuple[str, str], tuple[float, Task]] = {}

    async def _check_audience(self, tenant_id: str, d: Definition) -> None:
        if d.audience_id and not await self._audiences.audience_exists(tenant_id, d.audience_id):
            raise InvalidArgument.field(
                "task.eligibility_audience", f"audiences/{d.audience_id} does not exist"
            )

    async def create(self, tenant_id: str, d: Definition) -> Task:
        validate(d)
        await self._check_audience(tenant_id, d)
        body = to_body(d)
        digest = content_hash(body)
        async with self._db.transaction(tenant_id) as conn:
            await _check_badges(conn, d)
            if not await definition_store.insert_task(conn, tenant_id, d.task_id, d.kind, body, digest):
                row = await definition_store.task(conn, d.task_id)
                assert row is not None
                if row.version != 1 or row.content_hash != digest:
                    raise AlreadyExists(f"tasks/{d.task_id} exists with other content")
            else:
                await allowance.create(conn, tenant_id, definition_store.budget_owner(d.task_id), _total(d))
            row = await definition_store.task(conn, d.task_id)
        assert row is not None
        return task_from_row(row)

    async def update(self, tenant_id: str, d: Definition, expected_version: int) -> Task:
        validate(d)
        if expected_version < 0:
            raise InvalidArgument.field("expected_version", "must be 0 (any) or a version number")
        await self._check_audience(tenant_id, d)
        body = to_body(d)
        digest = content_hash(body)
        async with self._db.transaction(tenant_id) as conn:
            await _check_badges(conn, d)
            row = await definition_store.lock_task(conn, d.task_id)
            if row is None:
                raise NotFound(f"tasks/{d.task_id} not found")
            if row.content_hash != digest:
                if expected_version and expected_version != row.version:
                    raise Aborted(f"tasks/{d.task_id} is at version {row.version}, not {expected_version}")
                if row.kind != d.kind:
                    raise InvalidArgument.field(
                        "task.spec",
                        f"a task's kind cannot change (tasks/{d.task_id} is {Kind(row.kind).name})",
                    )
                if row.body.get("cycle", Cycle.NONE) != d.cycle:
                    raise InvalidArgument.field(
                        "task.cycle",
                        f"a task's cycle cannot change (tasks/{d.task_id} keeps its progress by it)",
                    )
                if row.state == State.RETIRED:
                    raise FailedPrecondition(f"tasks/{d.task_id} is retired")
                owner = definition_store.budget_owner(d.task_id)
                if await allowance.resize(conn, owner, _total(d)) is None:
                    used = await allowance.usage(conn, owner)
                    raise FailedPrecondition(
                        f"budget_points {d.budget_points} is below the {used.used if used else 0} points "
                        "already paid or reserved"
                    )
                await definition_store.add_version(conn, tenant_id, d.task_id, row.version + 1, body, digest)
            row = await definition_store.task(conn, d.task_id)
        self._recent.pop((tenant_id, d.task_id), None)
        assert row is not None
        return task_from_row(row)

    async def get(self, tenant_id: str, task_id: str) -> Task:
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            row = await definition_store.task(conn, task_id)
        if row is None:
            raise NotFound(f"tasks/{task_id} not found")
        return task_from_row(row)

    async def current(self, tenant_id: str, task_id: str, *, fresh: bool = False) -> Task:
        """The task as read at most CACHE_SECONDS ago (now, when `fresh`)."""
        key = (tenant_id, task_id)
        hit = self._recent.get(key)
        if hit is not None and not fresh and time.monotonic() - hit[0] < CACHE_SECONDS:
            return hit[1]
        task = await self.get(tenant_id, task_id)
        self._recent[key] = (time.monotonic(), task)
        return task

    async def open_for(
        self, tenant_id: str, task_id: str, kind: Kind, now: dt.datetime, *, fresh: bool = False
    ) -> Task:
        """The task a member acts in now: NOT_FOUND, INVALID_ARGUMENT (`task` is of another kind) or
        FAILED_PRECONDITION (retired, or outside its validity period)."""
        task = await self.current(tenant_id, task_id, fresh=fresh)
        d = task.definition
        if d.kind is not kind:
            raise InvalidArgument.field(
                "task", f"tasks/{task_id} is a {d.kind.name.lower()} task, not a {kind.name.lower()} task"
            )
        if task.state is State.RETIRED:
            raise FailedPrecondition(f"tasks/{task_id} is retired")
        if not d.valid_at(now):
            assert d.start_time is not None and d.end_time is not None
            raise FailedPrecondition(
                f"tasks/{task_id} runs from {d.start_time.isoformat()} until {d.end_time.isoformat()}"
            )
        return task

    async def list_page(
        self, tenant_id: str, size: int, token: str, show_retired: bool
    ) -> tuple[list[Task], str]:
        limit = ledger.page_size(size)
        scope = "tasks/all" if show_retired else "tasks/active"
        after = page_tokens.decode_one(token, scope, str) or ""
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            rows = await definition_store.tasks(
                conn, after, limit + 1, None if show_retired else State.ACTIVE
            )
        page = [task_from_row(r) for r in rows[:limit]]
        return page, page_tokens.encode(scope, page[-1].task_id) if len(rows) > limit else ""

    async def retire(self, tenant_id: str, task_id: str) -> Task:
        async with self._db.transaction(tenant_id) as conn:
            await definition_store.retire_task(conn, task_id)
            await allowance.hold(conn, definition_store.budget_owner(task_id))
            row = await definition_store.task(conn, task_id)
        self._recent.pop((tenant_id, task_id), None)
        if row is None:
            raise NotFound(f"tasks/{task_id} not found")
        return task_from_row(row)
