"""Ledger entries, rewards, leaderboard places, task definitions, member-task results and levels
between protobuf and the domain (used by api.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from google.protobuf import timestamp_pb2
from google.type import date_pb2
from memberops.tasks.v1 import levels_pb2, points_pb2, rewards_pb2, tasks_pb2, tasks_service_pb2

from runtime import checks
from runtime.errors import Violations
from services.tasks.economy import messages as economy_messages
from services.tasks.levels.levels import FeedEntry, MemberLevel, Policy, Tier
from services.tasks.points import ledger, reward_messages
from services.tasks.points.leaderboards import Place
from services.tasks.points.ledger_store import Entry
from services.tasks.points.rewards_store import NewReward, Redemption, Reward
from services.tasks.tasks import definitions
from services.tasks.tasks.completion_store import CompletionRow
from services.tasks.tasks.definitions import (
    KIND_OF,
    SPEC_FIELD,
    SPEC_OF,
    Definition,
    Kind,
    Limits,
    Spec,
    StreakMilestone,
    Task,
)
from services.tasks.tasks.enrolment_store import EnrolmentRow
from services.tasks.tasks.invites import Invite
from services.tasks.tasks.member_tasks import MemberTask
from services.tasks.tasks.shares import ShareRecord
from services.tasks.tasks.signin import SignInRecord, Streak


def stamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value)
    return message


def date_to_proto(day: dt.date) -> date_pb2.Date:
    return date_pb2.Date(year=day.year, month=day.month, day=day.day)


def date_from_proto(message: date_pb2.Date, path: str) -> dt.date:
    try:
        return dt.date(message.year, message.month, message.day)
    except ValueError:
        v = Violations()
        v.add(path, "must be a full calendar date (year, month and day)")
        v.raise_if_any()
        raise


def time_field(message: Any, name: str, v: Violations, path: str) -> dt.datetime | None:
    """An optional Timestamp field: None when unset, or when Python cannot hold it (then with a
    violation of `path`)."""
    if not message.HasField(name):
        return None
    return checks.timestamp(getattr(message, name), v, path)


def _spec(message: tasks_pb2.Task) -> Spec | None:
    """The spec set in the `spec` oneof; the spec dataclasses name their fields as the messages do."""
    which = message.WhichOneof("spec")
    if which is None:
        return None
    kind = next(k for k, name in SPEC_FIELD.items() if name == which)
    spec_type, sub = SPEC_OF[kind], getattr(message, which)
    values = {f.name: getattr(sub, f.name) for f in dataclasses.fields(spec_type)}
    if kind is Kind.SIGN_IN:
        values["milestones"] = [StreakMilestone(m.streak_days, m.badge) for m in sub.milestones]
    return spec_type(**{k: tuple(v) if not isinstance(v, int | str) else v for k, v in values.items()})  # type: ignore[no-any-return]


def definition_from_proto(message: tasks_pb2.Task) -> Definition:
    """The definition a request asks for; INVALID_ARGUMENT naming every bad field."""
    v = Violations()
    expiry = ledger.expiry(
        v, message.expiry_policy, message.expiry_days, default=ledger.ExpiryPolicy.NEVER, prefix="task."
    )
    audience = message.eligibility_audience
    if audience and not audience.startswith("audiences/"):
        v.add("task.eligibility_audience", "must be a resource name of the form audiences/{audience_id}")
    start = time_field(message, "start_time", v, "task.start_time")
    end = time_field(message, "end_time", v, "task.end_time")
    if (start is None and message.HasField("start_time")) or (end is None and message.HasField("end_time")):
        v.raise_if_any()  # a time Python cannot hold is not also "required": say what is wrong
    d = Definition(
        task_id=message.task_id,
        spec=_spec(message),
        start_time=start,
        end_time=end,
        display_name=message.display_name,
        time_zone=message.time_zone,
        reward_points=message.reward_points,
        expiry=expiry,
        limits=Limits(message.limits.per_day, message.limits.total),
        audience_id=audience.removeprefix("audiences/"),
        budget_points=message.budget_points,
        badge=message.badge,
        cycle=message.cycle,
        claim_required=message.claim_required,
    )
    definitions.validate(d, v)
    return d


def _spec_to_proto(spec: Spec, message: tasks_pb2.Task) -> None:
    sub: Any = getattr(message, SPEC_FIELD[KIND_OF[type(spec)]])
    sub.CopyFrom(type(sub)(**dataclasses.asdict(spec)))


def task_to_proto(task: Task) -> tasks_pb2.Task:
    d = task.definition
    assert d.spec is not None and d.start_time is not None and d.end_time is not None
    message = tasks_pb2.Task(
        name=f"tasks/{d.task_id}",
        task_id=d.task_id,
        display_name=d.display_name,
        kind=d.kind,  # type: ignore[arg-type]
        start_time=stamp(d.start_time),
        end_time=stamp(d.end_time),
        time_zone=d.time_zone,
        reward_points=d.reward_points,
        expiry_policy=d.expiry.policy,  # type: ignore[arg-type]
        expiry_days=d.expiry.days,
        limits=tasks_pb2.TaskLimits(per_day=d.limits.per_day, total=d.limits.total),
        eligibility_audience=f"audiences/{d.audience_id}" if d.audience_id else "",
        budget_points=d.budget_points,
        claim_required=d.claim_required,
        badge=d.badge,
        cycle=d.cycle,  # type: ignore[arg-type]
        state=task.state,  # type: ignore[arg-type]
        version=task.version,
        budget_used=task.budget_used,
        create_time=stamp(task.create_time),
        update_time=stamp(task.update_time),
    )
    _spec_to_proto(d.spec, message)
    assert SPEC_FIELD[d.kind] == message.WhichOneof("spec")
    return message


def completion_to_proto(row: CompletionRow) -> tasks_pb2.Completion:
    return tasks_pb2.Completion(
        name=f"tasks/{row.task_id}/members/{row.member_id}/completions/{row.completion_id}",
        completion_id=row.completion_id,
        task_id=row.task_id,
        member_id=row.member_id,
        points=row.points,
        state=row.state,  # type: ignore[arg-type]
        source=row.source,
        entry_id=row.entry_id or 0,
        reversal_entry_id=row.reversal_entry_id or 0,
        day=date_to_proto(row.day),
        create_time=stamp(row.create_time),
    )


def sign_in_to_proto(record: SignInRecord) -> tasks_pb2.SignInRecord:
    row = record.sign_in
    message = tasks_pb2.SignInRecord(
        task_id=row.task_id,
        member_id=row.member_id,
        day=date_to_proto(row.day),
        makeup=row.makeup,
        streak_day=row.streak,
        request_id=row.request_id,
        create_time=stamp(row.create_time),
    )
    if record.completion is not None:
        message.completion.CopyFrom(completion_to_proto(record.completion))
    return message


def streak_to_proto(streak: Streak) -> tasks_pb2.Streak:
    message = tasks_pb2.Streak(
        task_id=streak.task_id,
        member_id=streak.member_id,
        current=streak.current,
        longest=streak.longest,
        signed_today=streak.signed_today,
        makeups_left=streak.makeups_left,
        next_points=streak.next_points,
    )
    if streak.last_day is not None:
        message.last_day.CopyFrom(date_to_proto(streak.last_day))
    return message


def share_to_proto(record: ShareRecord) -> tasks_pb2.ShareRecord:
    row = record.share
    return tasks_pb2.ShareRecord(
        task_id=row.task_id,
        member_id=row.member_id,
        target=row.target,
        completion=completion_to_proto(record.completion),
        request_id=row.request_id,
        create_time=stamp(row.create_time),
    )


def invite_to_proto(record: Invite) -> tasks_pb2.Invite:
    row = record.invite
    message = tasks_pb2.Invite(
        task_id=row.task_id,
        inviter_member_id=row.inviter_member_id,
        invitee_member_id=row.invitee_member_id,
        state=row.state,  # type: ignore[arg-type]
        request_id=row.request_id,
        create_time=stamp(row.create_time),
    )
    if record.inviter_completion is not None:
        message.inviter_completion.CopyFrom(completion_to_proto(record.inviter_completion))
    if record.invitee_completion is not None:
        message.invitee_completion.CopyFrom(completion_to_proto(record.invitee_completion))
    if row.complete_time is not None:
        message.complete_time.CopyFrom(stamp(row.complete_time))
    return message


def enrolment_to_proto(row: EnrolmentRow) -> tasks_pb2.Enrolment:
    return tasks_pb2.Enrolment(
        task_id=row.task_id,
        member_id=row.member_id,
        enrol_time=stamp(row.enrol_time),
        window_end_time=stamp(row.window_end_time),
    )


def member_task_to_proto(item: MemberTask) -> tasks_pb2.MemberTask:
    message = tasks_pb2.MemberTask(
        task=task_to_proto(item.task),
        state=item.state,  # type: ignore[arg-type]
        progress=item.progress,
        target=item.target,
        completions=item.counts.total,
        completions_today=item.counts.today,
        claimable=item.counts.claimable,
    )
    if item.streak is not None:
        message.streak.CopyFrom(streak_to_proto(item.streak))
    if item.enrolment is not None:
        message.enrolment.CopyFrom(enrolment_to_proto(item.enrolment))
    return message


# --- levels --------------------------------------------------------------------------------------


def policy_from_proto(message: levels_pb2.LevelPolicy) -> Policy:
    return Policy(
        tiers=tuple(
            Tier(t.code, t.display_name, t.min_growth, economy_messages.benefits_from_proto(t.benefits))
            for t in message.tiers
        ),
        window_days=message.window_days,
        period_months=message.evaluation_period_months,
        grace_days=message.grace_days,
        time_zone=message.time_zone,
    )


def policy_to_proto(policy: Policy) -> levels_pb2.LevelPolicy:
    message = levels_pb2.LevelPolicy(
        tiers=[
            levels_pb2.LevelTier(
                code=t.code,
                display_name=t.display_name,
                min_growth=t.min_growth,
                benefits=economy_messages.benefits_to_proto(t.benefits),
            )
            for t in policy.tiers
        ],
        window_days=policy.window_days,
        evaluation_period_months=policy.period_months,
        grace_days=policy.grace_days,
        time_zone=policy.time_zone,
        version=policy.version,
    )
    if policy.update_time is not None:
        message.update_time.CopyFrom(stamp(policy.update_time))
    return message


def member_level_to_proto(level: MemberLevel) -> levels_pb2.MemberLevel:
    message = levels_pb2.MemberLevel(
        member_id=level.member_id,
        level=level.level,
        growth=level.growth,
        next_level=level.next_level,
        growth_to_next=level.growth_to_next,
        qualified_level=level.qualified_level,
    )
    if level.since is not None:
        message.since_time.CopyFrom(stamp(level.since))
    if level.review_time is not None:
        message.review_time.CopyFrom(stamp(level.review_time))
    return message


def tasks_feed_entry_to_proto(entry: FeedEntry) -> levels_pb2.TasksFeedEntry:
    return levels_pb2.TasksFeedEntry(
        cursor=entry.cursor,
        kind=levels_pb2.TASKS_FEED_ENTRY_KIND_LEVEL_CHANGED,
        member_id=entry.member_id,
        level_change=levels_pb2.LevelChange(
            from_level=entry.from_level, to_level=entry.to_level, upgrade=entry.upgrade, growth=entry.growth
        ),
        create_time=stamp(entry.create_time),
    )


def place_to_proto(place: Place) -> tasks_service_pb2.LeaderboardPlace:
    return tasks_service_pb2.LeaderboardPlace(member_id=place.member_id, points=place.points, rank=place.rank)


def entry_to_proto(entry: Entry) -> points_pb2.LedgerEntry:
    message = points_pb2.LedgerEntry(
        entry_id=entry.entry_id,
        member_id=entry.member_id,
        delta=entry.delta,
        reason=entry.reason,  # type: ignore[arg-type]
        reference=entry.reference,
        operator=entry.operator,
        note=entry.note,
        request_id=entry.request_id,
        shortfall=entry.shortfall,
        create_time=stamp(entry.create_time),
    )
    if entry.available_time is not None:
        message.available_time.CopyFrom(stamp(entry.available_time))
    if entry.expire_time is not None:
        message.expire_time.CopyFrom(stamp(entry.expire_time))
    return message


def reward_from_proto(message: rewards_pb2.Reward) -> NewReward:
    return NewReward(
        reward_id=message.reward_id,
        kind=message.kind,
        display_name=message.display_name,
        price=message.price,
        initial_stock=message.initial_stock,
        win_odds_bp=message.win_odds_bp,
        description=message.description,
        coupon_template=reward_messages.template_id(message.coupon_template),
        per_member_limit=message.per_member_limit,
    )


def reward_to_proto(reward: Reward) -> rewards_pb2.Reward:
    return rewards_pb2.Reward(
        reward_id=reward.reward_id,
        kind=reward.kind,  # type: ignore[arg-type]
        display_name=reward.display_name,
        price=reward.price,
        initial_stock=reward.initial_stock or 0,
        stock=reward.stock or 0,
        unlimited=reward.stock is None,
        win_odds_bp=reward.win_odds_bp,
        create_time=stamp(reward.create_time),
        **reward_messages.managed_fields(reward),
    )


def redemption_to_proto(redemption: Redemption) -> rewards_pb2.Redemption:
    return rewards_pb2.Redemption(
        redemption_id=redemption.redemption_id,
        member_id=redemption.member_id,
        reward_id=redemption.reward_id,
        points=redemption.points,
        outcome=redemption.outcome,  # type: ignore[arg-type]
        entry_id=redemption.entry_id,
        request_id=redemption.request_id,
        create_time=stamp(redemption.create_time),
        coupon_code=redemption.coupon_code or "",
    )
