"""A journey definition: data that the generic interpreter workflow runs, validated before it is stored.

Everything is a frozen dataclass of strings, numbers, tuples and dicts, so the Temporal data
converter carries a definition as it is, and a definition written as JSON (see `loading.py`) has
the same shape. A step is a protobuf-style oneof: exactly one of its kind fields is set, so an error
names its path the way the services' BadRequest details do (`steps[3].send.template`).

Steps run in list order; a step may jump only to a *later* step (branch arms, split arms, the
outcome of a wait for an event), so every journey is acyclic and ends: a member can neither loop
forever nor meet the same step twice, which is what lets the message log key a send by its step.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from types import ModuleType

from runtime.errors import Violations

CHANNELS = ("sms", "email", "app_push", "wecom")
# A send step's channel: one of CHANNELS, the member's (or the journey's) preferred one, or the
# first fallback that is not the preferred one.
CHANNEL_CHOICES = (*CHANNELS, "preferred", "fallback")
EVENT_KINDS = (
    "order",  # any order
    "first_order",  # the member's first order
    "registered",  # the member was created
    "tag_added",  # the member gained one of `values` in `dimension`
    "tag_removed",
    "audience_entered",  # the member entered dynamic audience `audience`
    "audience_exited",
)
# Personal fields every template may use, read from the member's profile at send time.
STEP_KINDS = (
    "wait",
    "wait_until_hour",
    "wait_for_event",
    "branch",
    "split",
    "send",
    "award",
    "add_tag",
    "exit",
    "issue_coupon",
)
PROFILE_FIELDS = ("nickname", "city", "level", "member_id")
# Fields of the coupon the enrolment's latest issue_coupon step gave the member (see IssueCoupon):
# a template may use them only after such a step.
COUPON_FIELDS = ("coupon_code", "coupon_threshold", "coupon_discount", "coupon_valid_until")
# What a broadcast (one cohort workflow for a whole snapshot, in batches) can run set-based: waits
# for the cohort (member-local hours per member), hash-based splits, sends, strategy tags (one
# tagging call per batch) and exits. Per-member work that has no batch form is left to triggered
# journeys: waiting for a member's own event, branching on a member's audience or tags, awarding
# points one EarnPoints call at a time, issuing coupons one IssueCoupon call at a time (see
# docs/decisions.md). Each kind (workflows/journeys/steps) is defined there once, with its
# `broadcast` flag; these names are what a unit test holds it to.
BROADCAST_STEP_KINDS = ("wait", "wait_until_hour", "split", "send", "add_tag", "exit")

KEY = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")
STEP_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")
NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}\Z")
# The tasks service's coupon template ids.
COUPON_TEMPLATE_ID = re.compile(r"^[a-z][a-z0-9_-]{0,62}\Z")
RESOURCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z")
DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?\Z")
CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)\Z")

MAX_STEPS = 100
MAX_WAIT = timedelta(days=365)
MAX_ATTRIBUTION = timedelta(days=90)
MAX_ENTRY_DELAY = timedelta(days=30)
MAX_HOLDOUT_PERCENT = 50
MAX_POINTS = 100_000_000
MAX_TEXT = 4000
# A tag field's text (inserted for each of its placeholders).
MAX_FIELD_TEXT = 200
# A rendered subject or body is cut here (a message never needs more; a stored version may hold
# fields long enough to make more).
MAX_RENDERED = 2 * MAX_TEXT


@dataclass(frozen=True)
class EventMatch:
    """An event of the member: a fact or change from tagging's or audience's feed."""

    kind: str
    # tag_added / tag_removed: the dimension and the values that count (empty: any value).
    dimension: str = ""
    values: tuple[str, ...] = ()
    # audience_entered / audience_exited: the audience id.
    audience: str = ""
    # order / first_order: only orders of at least this amount count.
    min_amount_minor: int = 0


@dataclass(frozen=True)
class AudienceEntry:
    """Members entering this dynamic audience are enrolled."""

    audience: str


@dataclass(frozen=True)
class Broadcast:
    """Every member of a snapshot (frozen audience) at once, optionally again on a schedule."""

    # `snapshots/{id}` to send to an existing snapshot, or an audience id to snapshot at each run.
    snapshot: str = ""
    audience: str = ""
    # Five-field cron expression (UTC); empty means once.
    schedule: str = ""


@dataclass(frozen=True)
class Entry:
    """How members enter: exactly one of the three."""

    event: EventMatch | None = None
    audience: AudienceEntry | None = None
    broadcast: Broadcast | None = None


@dataclass(frozen=True)
class Wait:
    duration: str  # `3d`, `12h`, `1d12h`, `30m`, `45s`


@dataclass(frozen=True)
class WaitUntilHour:
    """Until the next member-local `hour:minute` (the member's time zone from tagging). With
    `preferred`, the hour is the member's own `preferred_send_hour` tag (minute `minute`), and
    `hour` is the fallback for members who have none."""

    hour: int
    minute: int = 0
    preferred: bool = False


@dataclass(frozen=True)
class WaitForEvent:
    event: EventMatch
    timeout: str
    # Step ids to go to; empty means the next step.
    on_event: str = ""
    on_timeout: str = ""


@dataclass(frozen=True)
class TagCondition:
    dimension: str
    # The member holds one of these values (empty: any value of the dimension).
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Condition:
    """Exactly one: membership of an audience (now) or holding a tag value (now)."""

    audience: str = ""
    tag: TagCondition | None = None


@dataclass(frozen=True)
class Branch:
    condition: Condition
    # Step ids; empty means the next step.
    if_true: str = ""
    if_false: str = ""


@dataclass(frozen=True)
class SplitArm:
    name: str
    percent: int
    next: str = ""


@dataclass(frozen=True)
class Split:
    """Arms by percent (adding up to 100), drawn from the member's bucket of (journey, step): the
    same arm in a member journey and in a cohort (see workflows/journeys/steps/split.py)."""

    arms: tuple[SplitArm, ...]


@dataclass(frozen=True)
class Send:
    template: str
    channel: str = "preferred"


@dataclass(frozen=True)
class Award:
    """Points through the tasks service (a task earning, never expiring unless `expiry_days`)."""

    points: int
    expiry_days: int = 0


@dataclass(frozen=True)
class IssueCoupon:
    """A coupon of the tasks service's template `template` (its id), once per enrolment and step;
    the member's later sends may use its COUPON_FIELDS."""

    template: str


@dataclass(frozen=True)
class AddTag:
    """A strategy (or manual) tag value through tagging; the dimension must exist in the catalog."""

    dimension: str
    value: str


@dataclass(frozen=True)
class Exit:
    reason: str = ""


@dataclass(frozen=True)
class Step:
    id: str
    wait: Wait | None = None
    wait_until_hour: WaitUntilHour | None = None
    wait_for_event: WaitForEvent | None = None
    branch: Branch | None = None
    split: Split | None = None
    send: Send | None = None
    award: Award | None = None
    add_tag: AddTag | None = None
    exit: Exit | None = None
    # Added after format 2: written only when set (see loading.to_json).
    issue_coupon: IssueCoupon | None = None

    @property
    def kind(self) -> str:
        """The name of the one kind field that is set ('' when none or several are)."""
        set_ = [f.name for f in fields(self) if f.name != "id" and getattr(self, f.name) is not None]
        return set_[0] if len(set_) == 1 else ""


@dataclass(frozen=True)
class TagField:
    """A personal field computed from one of the member's tags: `{coupon_threshold}` from
    `average_order_amount`, say. `texts` maps a tag value to the text; members holding none of them
    get `default`."""

    name: str
    dimension: str
    texts: dict[str, str] = field(default_factory=dict)
    default: str = ""


@dataclass(frozen=True)
class Template:
    """`{nickname}`-style placeholders: the profile fields above and the template's tag fields."""

    body: str
    subject: str = ""
    tag_fields: tuple[TagField, ...] = ()


@dataclass(frozen=True)
class Goal:
    """Reaching it exits the member as converted, if it happens within `attribution` of entry."""

    event: EventMatch
    attribution: str = "14d"


@dataclass(frozen=True)
class Reentry:
    """`never`: one enrolment per member, ever. `after_exit`: again once the last one ended, at
    least `cooldown` after it."""

    policy: str = "never"
    cooldown: str = ""


@dataclass(frozen=True)
class QuietHours:
    """Member-local `HH:MM` window in which nothing is sent (sends wait until it ends)."""

    start: str
    end: str


@dataclass(frozen=True)
class ChannelPolicy:
    """`preferred` is a channel or `member` (the member's own preference from tagging); sends fall
    back through `fallback` in order when a channel is opted out, unreachable or not configured."""

    preferred: str = "member"
    fallback: tuple[str, ...] = ("app_push", "sms", "email", "wecom")


@dataclass(frozen=True)
class JourneyDefinition:
    key: str
    name: str
    entry: Entry
    steps: tuple[Step, ...]
    templates: dict[str, Template] = field(default_factory=dict)
    goal: Goal | None = None
    exit_on: tuple[EventMatch, ...] = ()
    holdout_percent: int = 0
    reentry: Reentry = field(default_factory=Reentry)
    # Messages to one member per member-local day across all journeys, checked when this one sends.
    frequency_cap: int = 2
    quiet_hours: QuietHours | None = None
    channels: ChannelPolicy = field(default_factory=ChannelPolicy)
    # An entry event (or audience entry) whose fact happened longer ago than this enrols nobody:
    # history loaded late is not a customer acting now.
    max_entry_delay: str = "1d"

    def step_index(self) -> dict[str, int]:
        return {step.id: i for i, step in enumerate(self.steps)}


def parse_duration(text: str) -> timedelta | None:
    """`1d12h` -> 36 hours; None when malformed or empty."""
    match = DURATION.match(text)
    if not text or not match:
        return None
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def duration(text: str) -> timedelta:
    """The duration of a validated definition (empty means zero)."""
    return parse_duration(text) or timedelta()


def validate(definition: JourneyDefinition) -> None:
    """Raises InvalidArgument naming every bad field, or returns when the definition can run."""
    v = Violations()
    if not KEY.match(definition.key):
        v.add("key", f"must match {KEY.pattern} (it is part of workflow ids)")
    if not definition.name.strip() or len(definition.name) > 200:
        v.add("name", "must be 1-200 characters")
    _entry(definition.entry, v)
    _steps(definition, v)
    _templates(definition.templates, v)
    if definition.goal is not None:
        check_event(definition.goal.event, "goal.event", v)
        check_duration(definition.goal.attribution, "goal.attribution", v, MAX_ATTRIBUTION)
    for i, match in enumerate(definition.exit_on):
        check_event(match, f"exit_on[{i}]", v)
    if not 0 <= definition.holdout_percent <= MAX_HOLDOUT_PERCENT:
        v.add("holdout_percent", f"must be 0-{MAX_HOLDOUT_PERCENT}")
    if definition.holdout_percent and definition.goal is None:
        v.add("holdout_percent", "a holdout measures a goal: set `goal` too")
    _reentry(definition.reentry, v)
    if not 1 <= definition.frequency_cap <= 20:
        v.add("frequency_cap", "must be 1-20 messages per member per day")
    if definition.quiet_hours is not None:
        _quiet_hours(definition.quiet_hours, v)
    _channels(definition.channels, v)
    check_duration(definition.max_entry_delay, "max_entry_delay", v, MAX_ENTRY_DELAY)
    if definition.entry.broadcast is not None:
        _broadcast(definition, v)
    v.raise_if_any()


def validate_broadcast(definition: JourneyDefinition) -> None:
    """Raises InvalidArgument unless the (valid) definition can run as a cohort."""
    v = Violations()
    if definition.entry.broadcast is None:
        v.add("entry", "a cohort runs a broadcast journey: set entry.broadcast")
    v.raise_if_any()


def _kinds() -> ModuleType:
    """The step kinds (workflows/journeys/steps), each validating its own field. Imported when
    first needed: they build on this module's dataclasses, so this module cannot import them first."""
    from workflows.journeys import steps  # noqa: PLC0415 (see above)

    return steps


def _broadcast(definition: JourneyDefinition, v: Violations) -> None:
    kinds = _kinds()
    for i, step in enumerate(definition.steps):
        if step.kind and not kinds.of(step).broadcast:
            v.add(
                f"steps[{i}].{step.kind}",
                f"a broadcast runs its cohort in batches and supports {', '.join(BROADCAST_STEP_KINDS)}",
            )
    for name, template in definition.templates.items():
        if template.tag_fields:
            v.add(f"templates[{name!r}].tag_fields", "a broadcast renders profile fields only")


def _entry(entry: Entry, v: Violations) -> None:
    kinds = [name for name in ("event", "audience", "broadcast") if getattr(entry, name) is not None]
    if len(kinds) != 1:
        v.add("entry", "set exactly one of event, audience, broadcast")
        return
    if entry.event is not None:
        check_event(entry.event, "entry.event", v)
    if entry.audience is not None and not RESOURCE_ID.match(entry.audience.audience):
        v.add("entry.audience.audience", "must be an audience id")
    if entry.broadcast is not None:
        b = entry.broadcast
        if bool(b.snapshot) == bool(b.audience):
            v.add("entry.broadcast", "set exactly one of snapshot, audience")
        if b.snapshot and not (
            b.snapshot.startswith("snapshots/") and RESOURCE_ID.match(b.snapshot.removeprefix("snapshots/"))
        ):
            v.add("entry.broadcast.snapshot", "must be snapshots/{snapshot_id}")
        if b.audience and not RESOURCE_ID.match(b.audience):
            v.add("entry.broadcast.audience", "must be an audience id")
        if b.schedule:
            why = cron_problem(b.schedule)
            if why is not None:
                v.add("entry.broadcast.schedule", why)
        if b.schedule and b.snapshot:
            v.add("entry.broadcast.schedule", "a scheduled broadcast snapshots an audience each time")


# The five cron fields: name and range. Day of week 0-6, 0 is Sunday.
CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 6),
)
_CRON_ITEM = re.compile(r"^(?:(\*)|(\d{1,2})(?:-(\d{1,2}))?)(?:/(\d{1,2}))?\Z")
# The longest month of each month number (29 for February: it happens in leap years).
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def cron_problem(text: str) -> str | None:
    """Why `text` is not a five-field cron expression that Temporal takes and that fires, or None.
    Each field is a comma-separated list of `*`, `n` or `n-m` (optionally `/step`, step > 0) inside
    the field's range; `n/step` without a range is refused, and so is a day of month no chosen
    month has (`0 0 31 2 *`): Temporal would take it and never start a run."""
    parts = text.split()
    if len(parts) != 5:
        return "must be a five-field cron expression: minute hour day-of-month month day-of-week"
    chosen: list[set[int]] = []
    for part, (name, low, high) in zip(parts, CRON_FIELDS, strict=True):
        values: set[int] = set()
        for item in part.split(","):
            found = _CRON_ITEM.match(item)
            if found is None:
                return f"{name} {item!r} must be *, n or n-m, optionally with /step"
            star, first, last, step = found.groups()
            start, end = (low, high) if star else (int(first), int(last or first))
            if step is not None and not star and last is None:
                return f"{name} {item!r}: a step needs * or a range n-m before it"
            if not low <= start <= end <= high:
                return f"{name} {item!r} must lie in {low}-{high}, its start not after its end"
            if step is not None and not 1 <= int(step) <= high - low + 1:
                return f"{name} {item!r}: the step must be 1-{high - low + 1}"
            values.update(range(start, end + 1, int(step or 1)))
        chosen.append(values)
    if not any(day <= _MONTH_DAYS[month - 1] for month in chosen[3] for day in chosen[2]):
        return "names no day that any of its months has: it would never run"
    return None


def check_event(match: EventMatch, path: str, v: Violations) -> None:
    if match.kind not in EVENT_KINDS:
        v.add(f"{path}.kind", f"must be one of {', '.join(EVENT_KINDS)}")
        return
    if match.kind.startswith("tag_") and not NAME.match(match.dimension):
        v.add(f"{path}.dimension", "a tag event names a tag dimension")
    if match.kind.startswith("audience_") and not RESOURCE_ID.match(match.audience):
        v.add(f"{path}.audience", "an audience event names an audience id")
    if match.min_amount_minor < 0 or (match.min_amount_minor and not match.kind.endswith("order")):
        v.add(f"{path}.min_amount_minor", "only orders have an amount, and it is not negative")
    if match.values and not match.kind.startswith("tag_"):
        v.add(f"{path}.values", "only tag events have values")


def check_duration(text: str, path: str, v: Violations, longest: timedelta) -> None:
    value = parse_duration(text)
    if value is None or value <= timedelta():
        v.add(path, "must be a positive duration such as 3d, 12h, 1d12h, 30m or 45s")
    elif value > longest:
        v.add(path, f"must be at most {longest.days} days")


def _steps(definition: JourneyDefinition, v: Violations) -> None:
    steps = definition.steps
    if not 1 <= len(steps) <= MAX_STEPS:
        v.add("steps", f"must have 1-{MAX_STEPS} steps")
    index: dict[str, int] = {}
    for i, step in enumerate(steps):
        if not STEP_ID.match(step.id):
            v.add(f"steps[{i}].id", f"must match {STEP_ID.pattern}")
        elif step.id in index:
            v.add(f"steps[{i}].id", f"repeats the id of steps[{index[step.id]}]")
        else:
            index[step.id] = i
    kinds = _kinds()
    for i, step in enumerate(steps):
        path = f"steps[{i}]"
        if not step.kind:
            v.add(path, f"set exactly one of {', '.join(STEP_KINDS)}")
            continue

        def target(name: str, step_id: str, here: int = i) -> None:
            if step_id and index.get(step_id, -1) <= here:
                v.add(name, f"must name a later step ({step_id!r} is unknown or not after this one)")

        kinds.of(step).validate(step, path, kinds.Checks(definition, v, target))


def _templates(templates: Mapping[str, Template], v: Violations) -> None:
    for name, template in templates.items():
        path = f"templates[{name!r}]"
        if not NAME.match(name):
            v.add(path, f"template names must match {NAME.pattern}")
        if not template.body or len(template.body) > MAX_TEXT:
            v.add(f"{path}.body", f"must be 1-{MAX_TEXT} characters")
        if len(template.subject) > 200:
            v.add(f"{path}.subject", "must be at most 200 characters")
        known = set(PROFILE_FIELDS) | set(COUPON_FIELDS)
        for j, tag_field in enumerate(template.tag_fields):
            if not NAME.match(tag_field.name) or tag_field.name in known:
                v.add(f"{path}.tag_fields[{j}].name", "must be a new field name")
            if not NAME.match(tag_field.dimension):
                v.add(f"{path}.tag_fields[{j}].dimension", "must be a tag dimension name")
            # A field's text is inserted wherever the template names it: short, like a profile field.
            for value, text in tag_field.texts.items():
                if len(text) > MAX_FIELD_TEXT:
                    v.add(
                        f"{path}.tag_fields[{j}].texts[{value!r}]",
                        f"must be at most {MAX_FIELD_TEXT} characters",
                    )
            if len(tag_field.default) > MAX_FIELD_TEXT:
                v.add(f"{path}.tag_fields[{j}].default", f"must be at most {MAX_FIELD_TEXT} characters")
            known.add(tag_field.name)
        for part in ("subject", "body"):
            bad = _unknown_placeholders(getattr(template, part), known)
            if bad is not None:
                v.add(f"{path}.{part}", bad)


def coupon_fields_used(template: Template) -> list[str]:
    """The coupon fields the template shows (those its own tag fields do not define, as versions
    stored before coupons existed did with `coupon_threshold`), in order of COUPON_FIELDS."""
    own = {tag_field.name for tag_field in template.tag_fields}
    try:
        used = {name for part in (template.subject, template.body) for name in placeholders(part)}
    except ValueError:
        return []  # reported by the template's own validation
    return [name for name in COUPON_FIELDS if name in used and name not in own]


def placeholders(text: str) -> Iterable[str]:
    """The `{name}` fields of a template text (raises ValueError on unbalanced braces)."""
    for _, name, _, _ in string.Formatter().parse(text):
        if name is not None:
            yield name


def _unknown_placeholders(text: str, known: set[str]) -> str | None:
    """Why the text is not a template of plain `{name}` fields, or None. A format spec or a
    conversion (`{nickname:>100000000}`, `{nickname!r}`) is refused: a width alone makes every send
    build a string of that size, and a member's field is text to insert, not to format."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as error:
        return f"is not a valid template ({error}); write {{{{ and }}}} for braces"
    formatted = sorted(
        {name for _, name, spec, conversion in parsed if name is not None and (spec or conversion)}
    )
    if formatted:
        return f"formats fields {', '.join(formatted)}: write each as a plain {{name}}, without : or !"
    names = [name for _, name, _, _ in parsed if name is not None]
    unknown = sorted({name for name in names if name not in known})
    if unknown:
        return f"uses unknown fields {', '.join(unknown)} (known: {', '.join(sorted(known))})"
    return None


def _reentry(reentry: Reentry, v: Violations) -> None:
    if reentry.policy not in ("never", "after_exit"):
        v.add("reentry.policy", "must be never or after_exit")
    if reentry.cooldown:
        if reentry.policy == "never":
            v.add("reentry.cooldown", "only after_exit re-entry has a cooldown")
        else:
            check_duration(reentry.cooldown, "reentry.cooldown", v, MAX_WAIT)


def _quiet_hours(quiet: QuietHours, v: Violations) -> None:
    for name in ("start", "end"):
        if not CLOCK.match(getattr(quiet, name)):
            v.add(f"quiet_hours.{name}", "must be a member-local time HH:MM")
    if quiet.start == quiet.end:
        v.add("quiet_hours", "start and end must differ")


def _channels(policy: ChannelPolicy, v: Violations) -> None:
    if policy.preferred != "member" and policy.preferred not in CHANNELS:
        v.add("channels.preferred", f"must be member or one of {', '.join(CHANNELS)}")
    seen: set[str] = set()
    for i, channel in enumerate(policy.fallback):
        if channel not in CHANNELS or channel in seen:
            v.add(f"channels.fallback[{i}]", f"must be one of {', '.join(CHANNELS)}, each once")
        seen.add(channel)
