"""Journey definitions between their protobuf form (the API) and the dataclasses (what the worker
stores and runs), field by field.

The protobuf types already enforce the JSON shape (`loading.py`'s job for files), so reading a
message only checks what protobuf cannot: sub-messages the dataclasses require. Meaning is checked
once, by `definition.validate`; every error names its path in the request (`journey.steps[3]...`).
Fields that are `optional` in the proto take the dataclass default when unset, so a request that
leaves them out means what a definition that leaves them out means.
"""

from __future__ import annotations

from memberops.journeys.v1 import journey_pb2 as pb

from runtime.errors import FieldViolation, InvalidArgument, Violations
from workflows.journeys import definition as d

# Where the definition sits in every request that carries one.
FIELD = "journey"


def prefixed(error: InvalidArgument, prefix: str) -> InvalidArgument:
    """The same violations with `prefix.` before each field path."""
    return InvalidArgument(
        FieldViolation(f"{prefix}.{v.field}" if v.field else prefix, v.description) for v in error.violations
    )


def checked(message: pb.JourneyDefinition, path: str = FIELD) -> d.JourneyDefinition:
    """The definition, or InvalidArgument naming every malformed field under `path`."""
    definition = from_proto(message, path)
    try:
        d.validate(definition)
    except InvalidArgument as error:
        raise prefixed(error, path) from None
    return definition


def from_proto(message: pb.JourneyDefinition, path: str = FIELD) -> d.JourneyDefinition:
    """The dataclass form, unvalidated; InvalidArgument when a required sub-message is missing."""
    v = Violations()
    definition = d.JourneyDefinition(
        key=message.key,
        name=message.name,
        entry=_entry(message.entry),
        steps=tuple(_step(step, f"{path}.steps[{i}]", v) for i, step in enumerate(message.steps)),
        templates={name: _template(t) for name, t in message.templates.items()},
        goal=_goal(message.goal, f"{path}.goal", v) if message.HasField("goal") else None,
        exit_on=tuple(_event(match) for match in message.exit_on),
        holdout_percent=message.holdout_percent,
        reentry=_reentry(message.reentry) if message.HasField("reentry") else d.Reentry(),
        frequency_cap=message.frequency_cap if message.HasField("frequency_cap") else 2,
        quiet_hours=(
            d.QuietHours(start=message.quiet_hours.start, end=message.quiet_hours.end)
            if message.HasField("quiet_hours")
            else None
        ),
        channels=_channels(message.channels) if message.HasField("channels") else d.ChannelPolicy(),
        max_entry_delay=message.max_entry_delay if message.HasField("max_entry_delay") else "1d",
    )
    v.raise_if_any()
    return definition


def _event(message: pb.EventMatch) -> d.EventMatch:
    return d.EventMatch(
        kind=message.kind,
        dimension=message.dimension,
        values=tuple(message.values),
        audience=message.audience,
        min_amount_minor=message.min_amount_minor,
    )


def _required_event(parent: pb.WaitForEvent | pb.Goal, path: str, v: Violations) -> d.EventMatch:
    if not parent.HasField("event"):
        v.add(f"{path}.event", "is required")
    return _event(parent.event)


def _entry(message: pb.Entry) -> d.Entry:
    kind = message.WhichOneof("kind")
    if kind == "event":
        return d.Entry(event=_event(message.event))
    if kind == "audience":
        return d.Entry(audience=d.AudienceEntry(audience=message.audience.audience))
    if kind == "broadcast":
        b = message.broadcast
        return d.Entry(broadcast=d.Broadcast(snapshot=b.snapshot, audience=b.audience, schedule=b.schedule))
    return d.Entry()


def _step(message: pb.Step, path: str, v: Violations) -> d.Step:
    kind = message.WhichOneof("kind")
    step = d.Step(id=message.id)
    if kind == "wait":
        return d.Step(id=message.id, wait=d.Wait(duration=message.wait.duration))
    if kind == "wait_until_hour":
        w = message.wait_until_hour
        return d.Step(id=message.id, wait_until_hour=d.WaitUntilHour(w.hour, w.minute, w.preferred))
    if kind == "wait_for_event":
        e = message.wait_for_event
        event = _required_event(e, f"{path}.wait_for_event", v)
        return d.Step(
            id=message.id, wait_for_event=d.WaitForEvent(event, e.timeout, e.on_event, e.on_timeout)
        )
    if kind == "branch":
        b = message.branch
        if not b.HasField("condition"):
            v.add(f"{path}.branch.condition", "is required")
        branch = d.Branch(condition=_condition(b.condition), if_true=b.if_true, if_false=b.if_false)
        return d.Step(id=message.id, branch=branch)
    if kind == "split":
        arms = tuple(d.SplitArm(arm.name, arm.percent, arm.next) for arm in message.split.arms)
        return d.Step(id=message.id, split=d.Split(arms=arms))
    if kind == "send":
        s = message.send
        channel = s.channel if s.HasField("channel") else "preferred"
        return d.Step(id=message.id, send=d.Send(template=s.template, channel=channel))
    if kind == "award":
        return d.Step(id=message.id, award=d.Award(message.award.points, message.award.expiry_days))
    if kind == "add_tag":
        return d.Step(id=message.id, add_tag=d.AddTag(message.add_tag.dimension, message.add_tag.value))
    if kind == "exit":
        return d.Step(id=message.id, exit=d.Exit(reason=message.exit.reason))
    if kind == "issue_coupon":
        return d.Step(id=message.id, issue_coupon=d.IssueCoupon(template=message.issue_coupon.template))
    return step


def _condition(message: pb.Condition) -> d.Condition:
    kind = message.WhichOneof("kind")
    if kind == "audience":
        return d.Condition(audience=message.audience)
    if kind == "tag":
        return d.Condition(tag=d.TagCondition(message.tag.dimension, tuple(message.tag.values)))
    return d.Condition()


def _template(message: pb.Template) -> d.Template:
    return d.Template(
        body=message.body,
        subject=message.subject,
        tag_fields=tuple(
            d.TagField(name=f.name, dimension=f.dimension, texts=dict(f.texts), default=f.default)
            for f in message.tag_fields
        ),
    )


def _goal(message: pb.Goal, path: str, v: Violations) -> d.Goal:
    event = _required_event(message, path, v)
    return d.Goal(event=event, attribution=message.attribution if message.HasField("attribution") else "14d")


def _reentry(message: pb.Reentry) -> d.Reentry:
    return d.Reentry(
        policy=message.policy if message.HasField("policy") else "never", cooldown=message.cooldown
    )


def _channels(message: pb.ChannelPolicy) -> d.ChannelPolicy:
    preferred = message.preferred if message.HasField("preferred") else "member"
    return d.ChannelPolicy(preferred=preferred, fallback=tuple(message.fallback))


# --- dataclass -> protobuf -----------------------------------------------------------------------


def to_proto(definition: d.JourneyDefinition) -> pb.JourneyDefinition:
    """The protobuf form; `from_proto(to_proto(x)) == x` for every definition."""
    message = pb.JourneyDefinition(
        key=definition.key,
        name=definition.name,
        entry=_entry_proto(definition.entry),
        steps=[_step_proto(step) for step in definition.steps],
        templates={name: _template_proto(t) for name, t in definition.templates.items()},
        exit_on=[_event_proto(match) for match in definition.exit_on],
        holdout_percent=definition.holdout_percent,
        reentry=pb.Reentry(policy=definition.reentry.policy, cooldown=definition.reentry.cooldown),
        frequency_cap=definition.frequency_cap,
        channels=pb.ChannelPolicy(
            preferred=definition.channels.preferred, fallback=definition.channels.fallback
        ),
        max_entry_delay=definition.max_entry_delay,
    )
    if definition.goal is not None:
        goal = definition.goal
        message.goal.CopyFrom(pb.Goal(event=_event_proto(goal.event), attribution=goal.attribution))
    if definition.quiet_hours is not None:
        message.quiet_hours.CopyFrom(
            pb.QuietHours(start=definition.quiet_hours.start, end=definition.quiet_hours.end)
        )
    return message


def _event_proto(match: d.EventMatch) -> pb.EventMatch:
    return pb.EventMatch(
        kind=match.kind,
        dimension=match.dimension,
        values=match.values,
        audience=match.audience,
        min_amount_minor=match.min_amount_minor,
    )


def _entry_proto(entry: d.Entry) -> pb.Entry:
    # A dataclass entry with several kinds set is invalid and never stored; the first one wins.
    if entry.event is not None:
        return pb.Entry(event=_event_proto(entry.event))
    if entry.audience is not None:
        return pb.Entry(audience=pb.AudienceEntry(audience=entry.audience.audience))
    if entry.broadcast is not None:
        b = entry.broadcast
        return pb.Entry(broadcast=pb.Broadcast(snapshot=b.snapshot, audience=b.audience, schedule=b.schedule))
    return pb.Entry()


def _step_proto(step: d.Step) -> pb.Step:
    message = pb.Step(id=step.id)
    if step.wait is not None:
        message.wait.duration = step.wait.duration
    elif step.wait_until_hour is not None:
        w = step.wait_until_hour
        message.wait_until_hour.CopyFrom(
            pb.WaitUntilHour(hour=w.hour, minute=w.minute, preferred=w.preferred)
        )
    elif step.wait_for_event is not None:
        e = step.wait_for_event
        message.wait_for_event.CopyFrom(
            pb.WaitForEvent(
                event=_event_proto(e.event), timeout=e.timeout, on_event=e.on_event, on_timeout=e.on_timeout
            )
        )
    elif step.branch is not None:
        b = step.branch
        message.branch.CopyFrom(
            pb.Branch(condition=_condition_proto(b.condition), if_true=b.if_true, if_false=b.if_false)
        )
    elif step.split is not None:
        message.split.CopyFrom(
            pb.Split(arms=[pb.SplitArm(name=a.name, percent=a.percent, next=a.next) for a in step.split.arms])
        )
    elif step.send is not None:
        message.send.CopyFrom(pb.Send(template=step.send.template, channel=step.send.channel))
    elif step.award is not None:
        message.award.CopyFrom(pb.Award(points=step.award.points, expiry_days=step.award.expiry_days))
    elif step.add_tag is not None:
        message.add_tag.CopyFrom(pb.AddTag(dimension=step.add_tag.dimension, value=step.add_tag.value))
    elif step.exit is not None:
        message.exit.reason = step.exit.reason
        message.exit.SetInParent()
    elif step.issue_coupon is not None:
        message.issue_coupon.CopyFrom(pb.IssueCoupon(template=step.issue_coupon.template))
    return message


def _condition_proto(condition: d.Condition) -> pb.Condition:
    if condition.tag is not None:
        return pb.Condition(
            tag=pb.TagCondition(dimension=condition.tag.dimension, values=condition.tag.values)
        )
    if condition.audience:
        return pb.Condition(audience=condition.audience)
    return pb.Condition()


def _template_proto(template: d.Template) -> pb.Template:
    return pb.Template(
        body=template.body,
        subject=template.subject,
        tag_fields=[
            pb.TagField(name=f.name, dimension=f.dimension, texts=f.texts, default=f.default)
            for f in template.tag_fields
        ],
    )
