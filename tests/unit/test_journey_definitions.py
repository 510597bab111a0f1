"""Journey definition validation (workflows/journeys/definition.py) over whole ranges of inputs.

tests/workflows/test_definitions.py names the failing field of one example per rule; these sweep
each rule's input space (every clock text, every split of 100, every jump between steps) and
compare with the rule written out independently, since what passes here is what the interpreter
and the cohort batches later rely on (a split covering every bucket, steps that only jump ahead).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import random
import string

import pytest

from runtime.errors import InvalidArgument
from workflows.journeys import templates
from workflows.journeys.definition import (
    BROADCAST_STEP_KINDS,
    MAX_RENDERED,
    STEP_KINDS,
    AddTag,
    AudienceEntry,
    Award,
    Branch,
    Broadcast,
    Condition,
    Entry,
    EventMatch,
    Exit,
    Goal,
    IssueCoupon,
    JourneyDefinition,
    QuietHours,
    Send,
    Split,
    SplitArm,
    Step,
    TagField,
    Template,
    Wait,
    WaitForEvent,
    WaitUntilHour,
    duration,
    parse_duration,
    validate,
)


def definition(*steps: Step, **changes: object) -> JourneyDefinition:
    """A valid triggered journey, changed as asked."""
    base = JourneyDefinition(
        key="welcome",
        name="Welcome",
        entry=Entry(event=EventMatch(kind="registered")),
        steps=steps or (Step(id="hello", send=Send(template="hello")),),
        templates={"hello": Template(body="Hi {nickname}")},
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def failing(candidate: JourneyDefinition) -> list[str]:
    """The fields validation names, [] when it accepts the definition."""
    try:
        validate(candidate)
    except InvalidArgument as error:
        return [violation.field for violation in error.violations]
    return []


def test_a_duration_is_days_hours_minutes_seconds_in_that_order() -> None:
    """Every combination of present and absent parts (with values 0-3 and a long one) parses to
    its sum; any other order, a space, a sign, a unit twice or nothing at all does not."""
    units = ("d", "h", "m", "s")
    seconds = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    for values in itertools.product((None, 0, 1, 3, 120), repeat=4):
        parts = [(v, u) for v, u in zip(values, units, strict=True) if v is not None]
        text = "".join(f"{v}{u}" for v, u in parts)
        expected = dt.timedelta(seconds=sum(v * seconds[u] for v, u in parts))
        assert parse_duration(text) == (expected if parts else None), text
        assert duration(text) == expected
    for text in ("1h1d", "1s1m", "1d1d", "3 days", "1d 2h", "-1d", "+1d", "1.5h", "d", "1w", "1D", "1d\n"):
        assert parse_duration(text) is None, text


@pytest.mark.parametrize(("field", "longest"), [("wait", 365), ("attribution", 90)])
def test_durations_are_positive_and_bounded(field: str, longest: int) -> None:
    """A wait lasts at most a year and a goal's attribution 90 days, to the second."""
    cases = {
        "0s": False,
        "1s": True,
        f"{longest}d": True,
        f"{longest - 1}d23h59m59s": True,
        f"{longest}d1s": False,
        f"{longest * 24}h": True,
        f"{longest * 24 * 3600 + 1}s": False,
        "": False,
    }
    for text, ok in cases.items():
        if field == "wait":
            candidate = definition(Step(id="w", wait=Wait(duration=text)))
            path = "steps[0].wait.duration"
        else:
            goal = Goal(event=EventMatch(kind="order"), attribution=text)
            candidate, path = definition(goal=goal), "goal.attribution"
        assert failing(candidate) == ([] if ok else [path]), text


def test_quiet_hours_take_every_real_clock_time_and_nothing_else() -> None:
    """Every HH:MM text from 00:00 to 29:69 (valid exactly when a clock shows it), and the shapes
    a clock is not written in; start and end must differ."""
    for hour, minute in itertools.product(range(30), range(70)):
        text = f"{hour:02d}:{minute:02d}"
        ok = hour < 24 and minute < 60
        assert failing(definition(quiet_hours=QuietHours(text, "23:59" if text != "23:59" else "00:00"))) == (
            [] if ok else ["quiet_hours.start"]
        ), text
    for text in ("9:00", "09:0", "0900", "09:00 ", " 09:00", "09:00\n", "09-00", "24:00", ""):
        assert failing(definition(quiet_hours=QuietHours("22:00", text))) == ["quiet_hours.end"], text
    assert failing(definition(quiet_hours=QuietHours("22:00", "22:00"))) == ["quiet_hours"]


def test_wait_until_hour_takes_every_clock_hour_and_minute() -> None:
    for hour, minute in itertools.product(range(-1, 25), (-1, 0, 30, 59, 60)):
        expected = [
            *(["steps[0].wait_until_hour.hour"] if not 0 <= hour <= 23 else []),
            *(["steps[0].wait_until_hour.minute"] if not 0 <= minute <= 59 else []),
        ]
        step = Step(id="at", wait_until_hour=WaitUntilHour(hour=hour, minute=minute))
        assert failing(definition(step)) == expected, (hour, minute)


def arm_names(count: int) -> list[str]:
    return [f"arm_{string.ascii_lowercase[i]}" for i in range(count)]


def test_a_split_is_two_or_more_arms_of_1_to_99_percent_adding_up_to_100() -> None:
    """Every split into two arms of -1..101 percent, and a fixed-seed sample of three to five
    arms: valid exactly when the arms cover the members once (what `split_arm` relies on)."""
    rng = random.Random("splits")
    shapes: list[tuple[int, ...]] = [(a, b) for a in range(-1, 102) for b in range(-1, 102)]
    shapes += [tuple(rng.randrange(-1, 101) for _ in range(rng.randrange(3, 6))) for _ in range(3000)]
    # Sums of exactly 100 are rare among random ones: make some.
    for _ in range(1000):
        cuts = sorted(rng.sample(range(1, 100), rng.randrange(2, 5)))
        shapes.append(tuple(b - a for a, b in itertools.pairwise([0, *cuts, 100])))
    valid = 0
    for percents in shapes:
        arms = tuple(SplitArm(name, p) for name, p in zip(arm_names(len(percents)), percents, strict=True))
        expected = [f"steps[0].split.arms[{j}].percent" for j, p in enumerate(percents) if not 1 <= p <= 99]
        if sum(percents) != 100:
            expected.append("steps[0].split.arms")
        assert failing(definition(Step(id="s", split=Split(arms=arms)))) == expected, percents
        valid += not expected
    assert valid > 1000
    assert failing(definition(Step(id="s", split=Split(arms=(SplitArm("all", 100),))))) == [
        "steps[0].split.arms",
        "steps[0].split.arms[0].percent",
    ]


def test_split_arm_names_are_unique_names() -> None:
    arms = (SplitArm("a", 50), SplitArm("a", 50))
    assert failing(definition(Step(id="s", split=Split(arms=arms)))) == ["steps[0].split.arms[1].name"]
    for name in ("A", "1a", "a-b", "", "a\n", "a" * 64):
        arms = (SplitArm(name, 50), SplitArm("b", 50))
        assert failing(definition(Step(id="s", split=Split(arms=arms)))) == ["steps[0].split.arms[0].name"]
    arms = (SplitArm("a" * 63, 50), SplitArm("b_2", 50))
    assert failing(definition(Step(id="s", split=Split(arms=arms)))) == []


def jumping(kind: str, target: str) -> Step:
    """A step of `kind` whose (first) jump names `target`."""
    if kind == "branch":
        return Step(id="from", branch=Branch(condition=Condition(audience="vip"), if_true=target))
    if kind == "split":
        return Step(id="from", split=Split(arms=(SplitArm("a", 50, next=target), SplitArm("b", 50))))
    event = EventMatch(kind="order")
    return Step(id="from", wait_for_event=WaitForEvent(event=event, timeout="1d", on_timeout=target))


@pytest.mark.parametrize("kind", ["branch", "split", "wait_for_event"])
def test_a_step_jumps_only_to_a_later_step(kind: str) -> None:
    """Every position of the jumping step among six and every target (each step, an unknown id,
    none): accepted exactly when the target comes after it, so no journey can loop."""
    paths = {
        "branch": "branch.if_true",
        "split": "split.arms[0].next",
        "wait_for_event": "wait_for_event.on_timeout",
    }
    for here in range(6):
        ids = [f"s{i}" for i in range(6)]
        for target in ["", "nowhere", *ids]:
            steps = [Step(id=i, send=Send(template="hello")) for i in ids]
            steps[here] = dataclasses.replace(jumping(kind, target), id=ids[here])
            ok = target == "" or (target in ids and ids.index(target) > here)
            expected = [] if ok else [f"steps[{here}].{paths[kind]}"]
            assert failing(definition(*steps)) == expected, (here, target)


def example_step(kind: str) -> Step:
    """A valid step of each kind."""
    match kind:
        case "wait":
            return Step(id="x", wait=Wait(duration="1d"))
        case "wait_until_hour":
            return Step(id="x", wait_until_hour=WaitUntilHour(hour=10))
        case "wait_for_event":
            return Step(id="x", wait_for_event=WaitForEvent(event=EventMatch(kind="order"), timeout="3d"))
        case "branch":
            return Step(id="x", branch=Branch(condition=Condition(audience="vip")))
        case "split":
            return Step(id="x", split=Split(arms=(SplitArm("a", 50), SplitArm("b", 50))))
        case "send":
            return Step(id="x", send=Send(template="hello"))
        case "award":
            return Step(id="x", award=Award(points=10))
        case "add_tag":
            return Step(id="x", add_tag=AddTag(dimension="campaign", value="spring"))
        case "issue_coupon":
            return Step(id="x", issue_coupon=IssueCoupon(template="welcome-coupon"))
        case _:
            return Step(id="x", exit=Exit())


def test_a_step_sets_exactly_one_kind_and_a_broadcast_takes_only_batchable_kinds() -> None:
    """Each kind alone is valid for a triggered journey, and for a broadcast exactly when it is
    one of BROADCAST_STEP_KINDS; any two kinds together are refused."""
    broadcast = Entry(broadcast=Broadcast(audience="vip"))
    for kind in STEP_KINDS:
        step = example_step(kind)
        assert step.kind == kind
        assert failing(definition(step)) == []
        expected = [] if kind in BROADCAST_STEP_KINDS else [f"steps[0].{kind}"]
        assert failing(definition(step, entry=broadcast)) == expected, kind
    for first, second in itertools.combinations(STEP_KINDS, 2):
        both = dataclasses.replace(example_step(first), **{second: getattr(example_step(second), second)})
        assert both.kind == ""
        assert failing(definition(both)) == ["steps[0]"], (first, second)


def test_identifiers_are_whole_strings_without_a_trailing_newline() -> None:
    """A key ends up in workflow ids and a step id in the message log's key: 'welcome\\n' is not
    'welcome' (a pattern anchored with `$` accepts it, as 560cc3e found in the services)."""
    newline = {
        "key": definition(key="welcome\n"),
        "steps[0].id": definition(Step(id="hello\n", send=Send(template="hello"))),
        "entry.audience.audience": definition(entry=Entry(audience=AudienceEntry(audience="vip\n"))),
        "steps[0].add_tag.dimension": definition(
            Step(id="x", add_tag=AddTag(dimension="campaign\n", value="spring"))
        ),
        "steps[0].wait.duration": definition(Step(id="x", wait=Wait(duration="1d\n"))),
        "quiet_hours.end": definition(quiet_hours=QuietHours("22:00", "08:00\n")),
    }
    for field, candidate in newline.items():
        assert failing(candidate) == [field], field


def test_holdout_and_frequency_cap_ranges() -> None:
    goal = Goal(event=EventMatch(kind="order"))
    for percent in range(-1, 102):
        for with_goal in (True, False):
            expected = []
            if not 0 <= percent <= 50:
                expected.append("holdout_percent")
            if percent and not with_goal:
                expected.append("holdout_percent")
            candidate = definition(holdout_percent=percent, goal=goal if with_goal else None)
            assert failing(candidate) == expected, (percent, with_goal)
    for cap in range(-1, 23):
        assert failing(definition(frequency_cap=cap)) == ([] if 1 <= cap <= 20 else ["frequency_cap"])


@pytest.mark.parametrize(
    "text",
    ["{nickname:>100000000}", "{nickname!r}", "{nickname:d}", "{member_id:,}", "Hi {nickname!s:>5}"],
)
@pytest.mark.parametrize("part", ["subject", "body"])
def test_a_template_takes_plain_fields_only(text: str, part: str) -> None:
    """A format spec would let a definition make every send build a string of its width."""

    def template_with(value: str) -> Template:
        return Template(body=value) if part == "body" else Template(body="Hi", subject=value)

    template = template_with(text)
    with pytest.raises(InvalidArgument) as refused:
        validate(definition(templates={"hello": template}))
    assert [v.field for v in refused.value.violations] == [f"templates['hello'].{part}"]
    validate(definition(templates={"hello": template_with("{{x:5}} {nickname}")}))


def test_a_stored_template_with_a_format_spec_renders_its_fields_unformatted() -> None:
    """Versions stored before the rule are loaded, not re-validated: their specs are ignored."""
    template = Template(subject="{nickname!r}", body="Hi {nickname:>100000000} {{x}} in {city:d}{level}")
    assert templates.render(template, {"nickname": "Mei", "city": "Hangzhou"}) == (
        "Mei",
        "Hi Mei {x} in Hangzhou",
    )


# Each accepted here is also made a Temporal schedule (tests/workflows/test_broadcast_runs.py).
GOOD_CRONS = (
    "0 9 * * 1",
    "*/15 * * * *",
    "0 0 29 2 *",
    "0 8-18/2 1,15 * 1-5",
    "59 23 31 12 0,6",
    "0 0 30 2,4 *",
)
BAD_CRONS = {
    "61 * * * *": "minute '61' must lie in 0-59",
    "*/0 * * * *": "the step must be 1-60",
    "5-1 * * * *": "its start not after its end",
    "0 24 * * *": "hour '24' must lie in 0-23",
    "0 0 0 * *": "day of month '0' must lie in 1-31",
    "0 0 32 * *": "day of month '32'",
    "0 0 1 13 *": "month '13' must lie in 1-12",
    "0 0 * * 7": "day of week '7' must lie in 0-6",
    ",,, - - - -": "minute ''",
    "5/10 * * * *": "a step needs * or a range",
    "0 0 31 2 *": "never run",
    "0 0 31 4,6,9,11 *": "never run",
    "* * * *": "five-field",
    "0 9 * * MON": "day of week 'MON'",
}


def test_a_broadcast_schedule_is_a_cron_that_temporal_takes_and_that_fires() -> None:
    def scheduled(cron: str) -> JourneyDefinition:
        return definition(entry=Entry(broadcast=Broadcast(audience="everyone", schedule=cron)))

    for cron in GOOD_CRONS:
        validate(scheduled(cron))
    for cron, why in BAD_CRONS.items():
        with pytest.raises(InvalidArgument) as refused:
            validate(scheduled(cron))
        ((path, description),) = [(v.field, v.description) for v in refused.value.violations]
        assert path == "entry.broadcast.schedule" and why in description, cron


def test_a_rendered_text_is_cut_at_its_limit_and_tag_field_texts_are_short() -> None:
    long = TagField(name="offer", dimension="rfm", texts={"high": "x" * 200}, default="y" * 200)
    body = "{offer}" * 500
    subject, rendered = templates.render(Template(body=body, tag_fields=(long,)), {"offer": "x" * 200})
    assert (subject, rendered) == ("", "x" * MAX_RENDERED)
    validate(definition(templates={"hello": Template(body="{offer}", tag_fields=(long,))}))
    longer = dataclasses.replace(long, texts={"high": "x" * 201}, default="y" * 201)
    with pytest.raises(InvalidArgument) as refused:
        validate(definition(templates={"hello": Template(body="{offer}", tag_fields=(longer,))}))
    assert {v.field for v in refused.value.violations} == {
        "templates['hello'].tag_fields[0].texts['high']",
        "templates['hello'].tag_fields[0].default",
    }
