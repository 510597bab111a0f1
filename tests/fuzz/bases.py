"""A valid request per RPC, generated from its descriptor, for the fuzzer to mutate one field at a time.

A mutation only tells something when the rest of the request is valid, so every field is filled
with a plausible value: references point at resources of a small world the fuzzer creates first in
its own tenant (a member, an order, a tag definition, an audience, a snapshot, a task, a reward),
enums take their first non-zero value, times lie a day back. `HAND_WRITTEN` patches the few bases
the generator cannot guess; an RPC missing there still gets the generated base, so a new RPC is
covered without editing anything.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from memberops.tagging.v1 import tags_pb2
from memberops.tasks.v1 import points_pb2, rewards_pb2, tasks_pb2

from services.journeys import convert
from tests.conftest import unique
from tests.fuzz import wire
from tests.fuzz.discovery import Rpc
from workflows.journeys.definition import Entry, EventMatch, JourneyDefinition, Send, Step, Template

# How deep the generator fills nested messages: recursive rule trees stop here.
MAX_DEPTH = 6

# Calls made once, in this order, before fuzzing, so the world's references exist: an RPC, called
# with its base patched for the variant named second (a task of each kind the task RPCs need).
SETUP = (
    ("UpsertMember", ""),
    ("RecordOrder", ""),
    ("ImportOrders", "refund_order"),
    ("CreateTagDefinition", ""),
    ("CreateAudience", ""),
    ("CreateJourney", ""),
    ("CreateSnapshot", ""),
    ("CreateBadge", ""),
    ("CreateTask", "sign_in"),
    ("CreateTask", "share"),
    ("CreateTask", "invite"),
    ("CreateTask", "purchase"),
    ("CreateCouponTemplate", ""),
    ("IssueCouponToAudience", ""),
    ("CreateReward", ""),
    ("EarnPoints", ""),
    ("PutWeComConnector", ""),
)

# Method prefixes of RPCs that create a resource: their own id is fresh on every fuzzed call, so a
# mutated create is not refused as a duplicate of the setup's.
_CREATES = ("Create", "Record", "Upsert", "Import")
# Fields that must be fresh on every call (idempotency keys, ids of the events a call records, and
# a member's WeCom contact, which is one member's: a fresh member with the setup's is ALREADY_EXISTS).
_ALWAYS_FRESH = frozenset(
    {"request_id", "event_id", "refund_id", "invitee_member_id", "wecom_external_userid"}
)


@dataclass
class World:
    """The ids of the fuzz tenant's resources that bases refer to."""

    member: str = field(default_factory=lambda: unique("fz-m"))
    order: str = field(default_factory=lambda: unique("fz-o"))
    # An order of its own for ImportRefunds: RecordRefund's base refunds `order` in full first.
    refund_order: str = field(default_factory=lambda: unique("fz-o"))
    dimension: str = field(default_factory=lambda: unique("fz_dim").replace("-", "_"))
    audience: str = field(default_factory=lambda: unique("fz-a"))
    snapshot: str = field(default_factory=lambda: unique("fz-s"))
    task: str = field(default_factory=lambda: unique("fz-t"))
    reward: str = field(default_factory=lambda: unique("fz-r"))
    line: str = field(default_factory=lambda: unique("fz-l"))
    journey: str = field(default_factory=lambda: unique("fz-j"))
    coupon_template: str = field(default_factory=lambda: unique("fz-ct"))
    # The request id of the world's coupon issuance to its audience (its name's id).
    issuance: str = field(default_factory=lambda: unique("fz-ci"))
    badge: str = field(default_factory=lambda: unique("fz-b"))
    # task kind (the Task.spec oneof field) -> id of a task of that kind; `task` is the sign-in one
    tasks: dict[str, str] = field(default_factory=dict)

    def task_of(self, kind: str) -> str:
        if kind == "sign_in":
            return self.task
        return self.tasks.setdefault(kind, unique(f"fz-t{kind[:2]}"))

    def ids(self) -> dict[str, str]:
        """Id field name -> the world's id."""
        return {
            "member_id": self.member,
            "inviter_member_id": self.member,
            "order_id": self.order,
            "audience_id": self.audience,
            "task_id": self.task,
            "reward_id": self.reward,
            "dimension": self.dimension,
            "line_id": self.line,
            "journey_key": self.journey,
        }

    def names(self) -> dict[str, str]:
        """Resource type -> the world's resource name of that type."""
        return {
            "Member": f"members/{self.member}",
            "Order": f"orders/{self.order}",
            "TagDefinition": f"tagDefinitions/{self.dimension}",
            "Audience": f"audiences/{self.audience}",
            "Snapshot": f"snapshots/{self.snapshot}",
            "Task": f"tasks/{self.task}",
            "Journey": f"journeys/{self.journey}",
            "CouponTemplate": f"couponTemplates/{self.coupon_template}",
        }


# String fields that hold a reference to a resource of a type.
_REFERENCES = {
    "member": "Member",
    "audience": "Audience",
    "eligibility_audience": "Audience",
    "snapshot": "Snapshot",
    "parent": "Snapshot",
    "task": "Task",
    "template": "CouponTemplate",
    "claim_audience": "Audience",
}
# Resource types in the order an RPC's name is searched for the type its `name` field names.
_RPC_NOUNS = ("Snapshot", "Audience", "TagDefinition", "CouponTemplate", "Task", "Journey", "Member")

_STRINGS = {
    "time_zone": "Asia/Shanghai",
    "default_time_zone": "Asia/Shanghai",
    "email": "fuzz@example.com",
    "phone": "+8613800000000",
    "page_token": "",
    "after_cursor": "",
    "value": "a",
    "values": "a",
    "code": "gold",
}


@dataclass
class Base:
    """A valid request and the paths of the fields that take a fresh id on every call."""

    message: Message
    fresh: list[tuple[str, ...]]


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def fresh_id(name: str) -> str:
    """A new id for field `name` (dimensions are lower-case identifiers)."""
    if name == "dimension":
        return unique("fz_dim").replace("-", "_")
    return unique(name.split("_", maxsplit=1)[0])


def _int_value(name: str) -> int:
    if "version" in name or name == "revision":
        return 0
    if name in {"page_size", "limit", "batch_size", "chunk_size", "sample_size", "top_n"}:
        return 10
    if name.endswith("_days"):
        return 30
    if name.endswith("percent"):
        return 100
    if name.endswith("_bp"):
        return 10_000
    return 10


def _string_value(name: str, rpc: Rpc, owner: Descriptor, world: World, depth: int) -> str:
    if name in _STRINGS:
        return _STRINGS[name]
    if name in _ALWAYS_FRESH:
        return fresh_id(name)
    if name in _REFERENCES:
        return world.names()[_REFERENCES[name]]
    if name in {"name", "names"}:
        if depth == 0:
            noun = next((n for n in _RPC_NOUNS if n in rpc.name), "Member")
            return world.names()[noun]
        return world.names().get(owner.name, unique("fuzz"))
    ids = world.ids()
    if name in ids:
        return ids[name]
    if name.endswith("_ids"):
        return ids.get(name[:-1], unique("fz"))
    if name == "dimensions":
        return world.dimension
    if name.endswith("_id"):
        return unique(name[:-3])
    return "fuzz"


def _well_known(msg: Message) -> bool:
    """Fills google.protobuf / google.type messages; False when `msg` is not one of them."""
    name = msg.DESCRIPTOR.full_name
    yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    if name == "google.protobuf.Timestamp":
        msg.FromDatetime(yesterday)  # type: ignore[attr-defined]
    elif name == "google.type.Date":
        msg.year, msg.month, msg.day = yesterday.year, yesterday.month, yesterday.day  # type: ignore[attr-defined]
    elif name == "google.protobuf.Struct":
        msg.update({"fuzz": "v"})  # type: ignore[attr-defined]
    elif name == "google.protobuf.Value":
        msg.string_value = "v"  # type: ignore[attr-defined]
    elif name in {"google.protobuf.FieldMask", "google.protobuf.Duration", "google.protobuf.ListValue"}:
        pass
    else:
        return False
    return True


def fill(msg: Message, rpc: Rpc, world: World, depth: int = 0, stack: tuple[str, ...] = ()) -> None:
    """Fills every field of `msg` with a plausible value, one member per oneof: a flag
    (`Rule.always`) or a message that cannot contain itself (`AudienceRule.tag`) if there is one,
    so recursive rules end in a leaf."""
    descriptor = wire.descriptor(msg)
    if _well_known(msg) or depth > MAX_DEPTH:
        return
    chosen: set[str] = set()
    for oneof in descriptor.oneofs:
        members: list[FieldDescriptor] = list(oneof.fields)
        flags = [f for f in members if f.type == FieldDescriptor.TYPE_BOOL]
        leaves = [f for f in members if f.message_type is not None and wire.cycle(f.message_type) is None]
        pick = (flags or leaves or members)[0]
        chosen.add(pick.name)
    for f in wire.fields(descriptor):
        if f.containing_oneof is not None and f.name not in chosen:
            continue
        _fill_field(msg, f, rpc, world, depth, (*stack, descriptor.full_name))


def _scalar(f: FieldDescriptor, rpc: Rpc, owner: Descriptor, world: World, depth: int) -> Any:
    if f.enum_type is not None:
        values = [v.number for v in f.enum_type.values if v.number != 0]
        return values[0] if values else 0
    if f.type == FieldDescriptor.TYPE_STRING:
        return _string_value(f.name, rpc, owner, world, depth)
    if f.type == FieldDescriptor.TYPE_BYTES:
        return b"fuzz"
    if f.type == FieldDescriptor.TYPE_BOOL:
        return f.name in {"always"}
    if f.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 1.5
    return _int_value(f.name)


def _fill_field(
    msg: Message, f: FieldDescriptor, rpc: Rpc, world: World, depth: int, stack: tuple[str, ...]
) -> None:
    owner = wire.descriptor(msg)
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        return  # maps stay empty: none of the requests needs one
    if f.message_type is not None:
        if f.message_type.full_name in stack and f.containing_oneof is None and f.is_repeated:
            return
        if f.is_repeated:
            child = getattr(msg, f.name).add()
        else:
            child = getattr(msg, f.name)
            child.SetInParent()
        fill(child, rpc, world, depth + 1, stack)
        return
    value = _scalar(f, rpc, owner, world, depth)
    if f.is_repeated:
        getattr(msg, f.name).append(value)
    else:
        setattr(msg, f.name, value)


def fresh_paths(msg: Message, rpc: Rpc, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of the fields to give a fresh id on every fuzzed call: idempotency keys everywhere,
    and a created resource's own id (`audience.audience_id`, `order.order_id`)."""
    found: list[tuple[str, ...]] = []
    creates = rpc.name.startswith(_CREATES)
    for f, value in msg.ListFields():
        here = (*path, f.name)
        if f.message_type is not None:
            if f.message_type.full_name.startswith("google.") or f.message_type.GetOptions().map_entry:
                continue
            items = list(value) if f.is_repeated else [value]
            for item in items[:1]:
                found.extend(fresh_paths(item, rpc, here))
            continue
        own = len(path) == 1 and _own_id(wire.descriptor(msg))
        if f.name in _ALWAYS_FRESH or (creates and f.name == own):
            found.append(here)
    return found


def _own_id(descriptor: Descriptor) -> str:
    """The field holding a resource's own id: `Audience.audience_id`, `TagDefinition.dimension`."""
    if descriptor.name == "TagDefinition":
        return "dimension"
    if descriptor.name == "JourneyDefinition":
        return "key"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", descriptor.name).lower() + "_id"


def generated(rpc: Rpc, world: World) -> Message:
    request = message_class(rpc.method.input_type)()
    fill(request, rpc, world)
    return request


def _tag_definition(request: Any, world: World) -> None:
    """An operator dimension with one value `a`: the one the world's audience and tags use."""
    definition = request.tag_definition
    definition.ClearField("model")
    definition.kind = tags_pb2.TAG_KIND_MANUAL
    del definition.values[:]
    definition.values.add(value="a", display_name="A")


def _member_mask(request: Any, world: World) -> None:
    request.update_mask.paths[:] = ["profile.city"]


def _builtin_dimension(request: Any, world: World) -> None:
    """A dimension decided by rules (the operator dimension of the world is not)."""
    request.dimensions[:] = ["gender"]


def _points(request: Any, world: World) -> None:
    """Points for the world's order, plenty, never expiring: what spends, redeems and the order
    reversal of the other bases need."""
    request.reason = points_pb2.REASON_ORDER
    request.reference = world.order
    request.amount = 1_000_000
    request.expiry_policy = points_pb2.EXPIRY_POLICY_NEVER
    request.expiry_days = 0
    request.return_window_days = 0


def _adjust(request: Any, world: World) -> None:
    request.expiry_policy = points_pb2.EXPIRY_POLICY_NEVER
    request.expiry_days = 0


def _spend(request: Any, world: World) -> None:
    request.amount = 1


def _reward(request: Any, world: World) -> None:
    reward = request.reward
    reward.kind = rewards_pb2.REWARD_KIND_COUPON
    reward.win_odds_bp = 0
    reward.price = 1
    reward.unlimited = True
    reward.ClearField("initial_stock")
    reward.ClearField("stock")
    reward.ClearField("coupon_template")
    reward.per_member_limit = 0


def _update_reward(request: Any, world: World) -> None:
    """The world's reward with its content as created: no stock to add (it is unlimited)."""
    _reward(request, world)
    request.add_stock = 0
    request.expected_version = 0


def _issuance(request: Any, world: World) -> None:
    """The world's issuance (the setup starts it; the fuzzed calls get fresh request ids)."""
    request.request_id = world.issuance


def _issuance_name(request: Any, world: World) -> None:
    request.name = f"couponIssuances/{world.issuance}"
    if hasattr(request, "page_token"):
        request.page_token = ""


def _coupon_template(request: Any, world: World) -> None:
    """The world's template: unlimited and claimable by anyone, so the issue and claim bases never
    run out (valid_days, not a window; no tag thresholds: tagging's catalog decides those)."""
    template = request.template
    template.template_id = world.coupon_template
    template.amount_off.amount_minor = 100
    template.ClearField("valid_from")
    template.ClearField("valid_until")
    template.ClearField("tag_thresholds")
    template.valid_days = 30
    template.total_stock = 0
    template.per_member_limit = 1000
    template.claimable = True
    template.claim_audience = ""


def _coupon_name(request: Any, world: World) -> None:
    """A well-formed code nobody holds: GetCoupon is checked up to NOT_FOUND."""
    request.name = "coupons/0000000000000000"


_SPECS: dict[str, Message] = {
    "sign_in": tasks_pb2.SignInSpec(streak_rewards=[1, 2, 3], makeups_per_month=3),
    "share": tasks_pb2.ShareSpec(),
    "invite": tasks_pb2.InviteSpec(trigger=tasks_pb2.INVITE_TRIGGER_REGISTER, invitee_points=5),
    "purchase": tasks_pb2.PurchaseSpec(measure=tasks_pb2.PURCHASE_MEASURE_ORDERS, target=1, window_days=30),
}


def _task(request: Any, world: World, kind: str = "sign_in") -> None:
    """A task of `kind` open from a year back to a year on: what sign-ins, shares, invites and
    enrolments of the other bases need."""
    task = request.task
    now = dt.datetime.now(dt.UTC)
    task.task_id = world.task_of(kind)
    task.name = f"tasks/{task.task_id}"
    getattr(task, kind).CopyFrom(_SPECS[kind])
    task.start_time.FromDatetime(now - dt.timedelta(days=365))
    task.end_time.FromDatetime(now + dt.timedelta(days=365))
    for name in ("expiry_days", "limits", "budget_points", "eligibility_audience", "claim_required", "cycle"):
        task.ClearField(name)
    task.badge = f"badges/{world.badge}"
    if kind == "sign_in":
        task.ClearField("reward_points")
        task.sign_in.milestones.add(streak_days=7, badge=task.badge)
    task.expiry_policy = points_pb2.EXPIRY_POLICY_NEVER


def _task_of(kind: str) -> Callable[[Any, World], None]:
    """A request naming the world's task of `kind` (a share is recorded on a share task)."""

    def patch(request: Any, world: World) -> None:
        request.task = f"tasks/{world.task_of(kind)}"

    return patch


def _badge(request: Any, world: World) -> None:
    request.badge.badge_id = world.badge
    request.badge.display_name = "Fuzz badge"
    request.badge.description = ""


def _level_policy(request: Any, world: World) -> None:
    policy = request.policy
    del policy.tiers[:]
    for code, growth in (("bronze", 0), ("silver", 1_000), ("gold", 5_000)):
        policy.tiers.add(code=code, display_name=code.title(), min_growth=growth)
    policy.window_days = 365
    policy.evaluation_period_months = 1
    policy.grace_days = 7


def _order_earning_rule(request: Any, world: World) -> None:
    """A rule left off (no follower runs in the fuzzer's tenant anyway), one point per 100."""
    request.rule.CopyFrom(type(request.rule)(enabled=False, minor_units_per_point=100, expiry_policy=1))


def _journey(request: Any, world: World) -> None:
    """The world's journey: entered on registration, one message (naming nothing elsewhere)."""
    definition = JourneyDefinition(
        key=world.journey,
        name="Fuzz",
        entry=Entry(event=EventMatch(kind="registered")),
        steps=(Step(id="hello", send=Send(template="hello")),),
        templates={"hello": Template(body="Hi {nickname}")},
    )
    request.journey.CopyFrom(convert.to_proto(definition))
    if hasattr(request, "sample_member"):
        request.sample_member = f"members/{world.member}"


def _journey_name(request: Any, world: World) -> None:
    request.name = f"journeys/{world.journey}"


def _member_names(request: Any, world: World) -> None:
    request.members[:] = [f"members/{world.member}"]


def _member_to_erase(request: Any, world: World) -> None:
    """A member that does not exist: erasing the world's member would leave the other bases
    naming nobody, so EraseMember's base and mutations are checked up to NOT_FOUND (its own tests
    erase members of their own)."""
    request.member = f"members/{unique('fz-gone')}"


def _rebuild(request: Any, world: World) -> None:
    """Two days of a rule dimension's history, daily, to now. It starts a workflow on the suite's
    tagging task queue, which no worker polls (the rebuild's own tests run theirs)."""
    request.dimensions[:] = ["loyalty"]
    request.start.FromDatetime(dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
    request.ClearField("end")
    request.ClearField("step")


def _rebuild_name(request: Any, world: World) -> None:
    """A rebuild nobody started: checked up to NOT_FOUND."""
    request.name = f"tagHistoryRebuilds/{unique('fz-rebuild')}"


def _data_to_erase(request: Any, world: World) -> None:
    """A member with no rows anywhere and a fresh pseudonym: erasing the world's member would
    leave the other bases naming nobody. The peers' EraseMemberData then answers OK with nothing
    changed, and its mutations are checked to fail whole (its own tests erase members of their
    own)."""
    request.member_id = unique("fz-gone")
    request.pseudonym = f"erased-{unique('fz')}"


def _refund_order(request: Any, world: World) -> None:
    """ImportOrders in the setup stores the world's refund order; ImportRefunds refunds it."""
    if request.DESCRIPTOR.name == "ImportOrdersRequest":
        request.orders[0].order_id = world.refund_order
    else:
        request.refunds[0].order_id = world.refund_order


def _wecom_connector(request: Any, world: World) -> None:
    """A connector of the fuzzer's tenant, pushing and pulling the world's MANUAL dimension, on: it
    starts the tenant's WeCom sync on the suite's journeys task queue, which no worker polls."""
    connector = request.connector
    connector.Clear()
    connector.corp_id = "wwfuzz0123456789"
    connector.secret = "fuzz-secret"
    connector.callback_token = "FuzzToken0123"
    connector.encoding_aes_key = "a" * 43
    connector.push_dimensions[:] = [world.dimension]
    connector.pull_dimensions[:] = [world.dimension]
    connector.enabled = True
    request.expected_version = 0


# RPC -> a patch applied to its generated base, for the bases the generator cannot guess.
HAND_WRITTEN: dict[str, Callable[[Any, World], None]] = {
    "CreateTagDefinition": _tag_definition,
    "UpdateTagDefinition": _tag_definition,
    "UpdateMember": _member_mask,
    "ExplainTags": _builtin_dimension,
    "RecomputeTags": _builtin_dimension,
    "EarnPoints": _points,
    "AdjustPoints": _adjust,
    "SpendPoints": _spend,
    "CreateReward": _reward,
    "UpdateReward": _update_reward,
    "IssueCouponToAudience": _issuance,
    "GetCouponIssuance": _issuance_name,
    "IssueCouponIssuancePage": _issuance_name,
    "CreateCouponTemplate": _coupon_template,
    "UpdateCouponTemplate": _coupon_template,
    "GetCoupon": _coupon_name,
    "CreateTask": _task,
    "CreateBadge": _badge,
    "UpdateTask": _task,
    "UpdateLevelPolicy": _level_policy,
    "UpdateOrderEarningRule": _order_earning_rule,
    "RecordShare": _task_of("share"),
    "RecordInvite": _task_of("invite"),
    "EnrolTask": _task_of("purchase"),
    "CreateJourney": _journey,
    "UpdateJourney": _journey,
    "ValidateJourney": _journey,
    "StartBroadcast": _journey_name,
    "BatchGetMemberTags": _member_names,
    "EraseMemberData": _data_to_erase,
    "RebuildTagHistory": _rebuild,
    "GetTagHistoryRebuild": _rebuild_name,
    "EraseMember": _member_to_erase,
    "ImportRefunds": _refund_order,
    "PutWeComConnector": _wecom_connector,
}


def base(rpc: Rpc, world: World, variant: str = "") -> Base:
    """The base of `rpc`; for the setup, `variant` names a task kind to create."""
    request = generated(rpc, world)
    if rpc.name == "CreateTask" and variant:
        _task(request, world, variant)
    elif variant == "refund_order":
        _refund_order(request, world)
    else:
        patch = HAND_WRITTEN.get(rpc.name)
        if patch is not None:
            patch(request, world)
    return Base(request, fresh_paths(request, rpc))


def refreshed(request: Message, fresh: list[tuple[str, ...]], skip: tuple[str, ...] = ()) -> Message:
    """A copy of `request` with a fresh id at every fresh path (except `skip`, the fuzzed field)."""
    copy = type(request)()
    copy.CopyFrom(request)
    for path in fresh:
        if path == skip:
            continue
        target: Any = copy
        for name in path[:-1]:
            target = getattr(target, name)
            if hasattr(target, "add"):  # a repeated message field: its first element
                if not target:
                    break
                target = target[0]
        else:
            setattr(target, path[-1], fresh_id(path[-1]))
    return copy
