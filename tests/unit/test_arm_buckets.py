"""Member buckets and the arms cut from them: snapshot splits, journey holdouts, cohort split steps.

A member's bucket decides which message they get and whether they are measured as holdout, so it
must be the documented md5 rule (the audience service computes it in SQL), spread evenly, and
independent between salts; and an arm of p percent must own exactly p hundredths of the buckets,
which is checked here for every bucket by finding a member in each.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import string
from collections import Counter

from runtime.buckets import BUCKETS, bucket
from runtime.errors import InvalidArgument
from services.audience.snapshots import DEFAULT_ARMS, MAX_ARMS, validate_arms
from workflows.journeys.definition import Split, SplitArm, Step
from workflows.journeys.steps.split import split_arm, split_salt

MEMBERS = [f"m-{i:06d}" for i in range(20_000)]


def md5_bucket(salt: str, member_id: str) -> int:
    """The rule as buckets.py words it (the SQL computes the same), from the digest's bytes."""
    digest = hashlib.md5(f"{salt}:{member_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 10_000


def test_a_bucket_is_the_documented_md5_rule_in_range() -> None:
    for salt in ("", "journey:win-back", "split:7:hello", "ünï:cödé"):
        for member_id in MEMBERS[:2000]:
            got = bucket(salt, member_id)
            assert 0 <= got < BUCKETS == 10_000
            assert got == md5_bucket(salt, member_id)


def test_buckets_spread_evenly_and_salts_are_independent() -> None:
    """20,000 members: each tenth of the buckets holds 10 % of them (within 1.5 points), and two
    salts' halves overlap on a quarter (a journey's holdout says nothing about a split's arm)."""
    first = [bucket("journey:a", m) for m in MEMBERS]
    second = [bucket("journey:b", m) for m in MEMBERS]
    tenths = Counter(b // 1000 for b in first)
    assert set(tenths) == set(range(10))
    assert all(abs(n / len(MEMBERS) - 0.1) < 0.015 for n in tenths.values()), tenths
    both = sum(1 for a, b in zip(first, second, strict=True) if a < 5000 and b < 5000)
    assert abs(both / len(MEMBERS) - 0.25) < 0.015


def representatives(salt: str) -> list[str]:
    """A member id for every bucket of `salt`: bucket b's member is the b-th entry."""
    found: dict[int, str] = {}
    for n in itertools.count():
        member_id = f"r-{n}"
        found.setdefault(bucket(salt, member_id), member_id)
        if len(found) == BUCKETS:
            return [found[b] for b in range(BUCKETS)]
    raise AssertionError("unreachable")


JOURNEY, STEP_ID = "spring-sale", "split-1"
EVERY_BUCKET = representatives(split_salt(JOURNEY, STEP_ID))


def split_step(*percents: int) -> Step:
    arms = tuple(SplitArm(f"arm_{i}", p, next=f"after-{i}") for i, p in enumerate(percents))
    return Step(id=STEP_ID, split=Split(arms=arms))


def arms_of_every_bucket(step: Step) -> list[str]:
    out = []
    for member_id in EVERY_BUCKET:
        arm = split_arm(JOURNEY, step, member_id)
        assert arm.next == f"after-{arm.name.removeprefix('arm_')}"
        out.append(arm.name)
    return out


def owned(percents: tuple[int, ...]) -> list[str]:
    """The arm of each bucket when each arm owns its share as one run, in arm order."""
    return [f"arm_{i}" for i, p in enumerate(percents) for _ in range(p * BUCKETS // 100)]


def test_a_split_arm_of_p_percent_owns_p_hundredths_of_the_buckets_in_order() -> None:
    """A sample of three- to five-arm splits: each arm owns exactly its share of the 10,000
    buckets, as one run of consecutive buckets in arm order."""
    rng = random.Random("arms")
    for _ in range(15):
        cuts = sorted(rng.sample(range(1, 100), rng.randrange(2, 5)))
        percents = tuple(b - a for a, b in itertools.pairwise([0, *cuts, 100]))
        assert arms_of_every_bucket(split_step(*percents)) == owned(percents), percents


def test_every_two_arm_split_owns_its_share_and_growing_an_arm_only_moves_members_into_it() -> None:
    """Every split 1/99 .. 99/1 owns its shares exactly; raising the first arm's share by one
    percent moves 100 buckets into it and none out of it: a member's arm is stable as long as
    the shares are."""
    before = arms_of_every_bucket(split_step(1, 99))
    assert before == owned((1, 99))
    for p in range(2, 100):
        after = arms_of_every_bucket(split_step(p, 100 - p))
        assert after == owned((p, 100 - p)), p
        moved = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
        assert moved == [("arm_1", "arm_0")] * 100, p
        before = after


def test_a_split_draws_per_journey_and_step() -> None:
    """The same member lands in the same arm on a retried batch, in a member journey and in any
    cohort of the journey, but another journey or another step draws again (about half of the
    members change arm in a 50/50 split)."""
    step = split_step(50, 50)
    other_step = Step(id="split-2", split=step.split)
    here = [split_arm(JOURNEY, step, m).name for m in MEMBERS[:4000]]
    assert here == [split_arm(JOURNEY, step, m).name for m in MEMBERS[:4000]]
    for changed in ([split_arm("autumn-sale", step, m).name for m in MEMBERS[:4000]],
                    [split_arm(JOURNEY, other_step, m).name for m in MEMBERS[:4000]]):  # fmt: skip
        differ = sum(a != b for a, b in zip(here, changed, strict=True))
        assert 0.45 < differ / 4000 < 0.55


def violations(arms: list[tuple[str, int]], request_id: str = "r-1") -> list[str]:
    try:
        validate_arms(arms, request_id)
    except InvalidArgument as error:
        return [v.field for v in error.violations]
    return []


def test_snapshot_arms_are_shares_of_1_to_100_adding_up_to_100() -> None:
    """Every pair of shares -1..101 and a sample of longer lists: valid exactly when each share is
    1-100 and they add up to 100 (the sum is only checked once the arms are otherwise fine)."""
    rng = random.Random("snapshot-arms")
    shapes: list[list[int]] = [[a, b] for a in range(-1, 102) for b in range(-1, 102)]
    shapes += [[rng.randrange(-1, 60) for _ in range(rng.randrange(1, 6))] for _ in range(2000)]
    shapes += [[100]]
    for shares in shapes:
        arms = [(f"arm{i}", s) for i, s in enumerate(shares)]
        expected = [f"splits[{i}].share_percent" for i, s in enumerate(shares) if not 1 <= s <= 100]
        if not expected and sum(shares) != 100:
            expected = ["splits"]
        assert violations(arms) == expected, shares
        if not expected:
            assert validate_arms(arms, "r-1") == tuple(arms)
    assert validate_arms([], "r-1") == DEFAULT_ARMS == (("all", 100),)


def name_ok(name: str) -> bool:
    """The arm name rule in words: 1-32 characters, a lower-case ASCII letter first, then
    lower-case ASCII letters, digits, `_` or `-`."""
    lower, digits = set(string.ascii_lowercase), set(string.digits)
    return (
        1 <= len(name) <= 32
        and name[0] in lower
        and all(c in lower or c in digits or c in "_-" for c in name[1:])
    )


def test_arm_names_are_checked_character_by_character() -> None:
    """Every one- and two-character name over printable ASCII, the lengths around 32, and names
    with a trailing newline or non-ASCII letters."""
    alphabet = [chr(c) for c in range(32, 127)]
    names = alphabet + [a + b for a in "aZ1_-" for b in alphabet]
    names += ["a" * n for n in (31, 32, 33)] + ["a\n", "a\r\n", "é", "aé", "a b", ""]
    for name in names:
        assert violations([(name, 60), ("other", 40)]) == ([] if name_ok(name) else ["splits[0].name"]), name


def test_arm_names_repeat_and_arm_counts_and_request_ids() -> None:
    assert violations([("a", 50), ("a", 50)]) == ["splits[1].name"]
    assert violations([(f"a{i}", 5) for i in range(MAX_ARMS)]) == []
    assert violations([(f"a{i}", 5) for i in range(MAX_ARMS + 1)]) == ["splits"]
    for length in (0, 1, 128, 129):
        expected = [] if 1 <= length <= 128 else ["request_id"]
        assert violations([("a", 100)], "r" * length) == expected, length
