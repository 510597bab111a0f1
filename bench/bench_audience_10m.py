"""Tag-and-profile audience counts over ten million members (issue 25): the audience service with
its bitmap index against today's SQL evaluator, in the same run. Runs only when asked (`make
bench-10m`, or `python -m bench bench_audience_10m`; `make bench` skips it): the first run generates
the 10M cluster (bench/tag_dataset.py, about half an hour, ~26 GB) and every run loads 10M members
into memory.

Two audience services run side by side on the cached cluster (bench/tag_dataset.py: members and
current tags, no orders or events), clocks frozen at dataset.NOW: one as configured (bitmaps on),
one with MEMBEROPS_AUDIENCE_BITMAPS=0, which evaluates every count as one SQL statement as before.
Per rule the counts interleave (bitmaps, SQL), the first of each side not counted; p50 of each side
and their ratio are printed, and every count of a rule must be the same on both sides.

Memory: the bitmap service's RSS once its index has loaded (its log says so) against the SQL-only
service's, and the index's own `memory_bytes()` and load time as the service logs them. Scale by
MEMBEROPS_BENCH_TAG_MEMBERS (default 10,000,000), e.g. 1,000,000 for a quick run.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from memberops.audience.v1 import audience_pb2, audience_service_pb2, audience_service_pb2_grpc
from memberops.tagging.v1 import rules_pb2

from bench import bench_audience, dataset, servers, tag_dataset

BITMAP_ROUNDS = int(os.environ.get("BENCH_10M_ROUNDS", "20"))
SQL_ROUNDS = int(os.environ.get("BENCH_10M_SQL_ROUNDS", "3"))
CLOCK = f"frozen:{dataset.NOW.isoformat()}"
# What the audience service logs (services/audience/bitmaps.py) when a tenant's bitmaps are loaded,
# with tenant, members, bytes and seconds, and when a load or refresh failed.
LOADED_EVENT = "bitmap index loaded"
FAILED_EVENT = "bitmap index refresh failed"
LOAD_TIMEOUT_SECONDS = 1800
IMPORTANT = ("important_value", "important_development", "important_retention", "important_win_back")

Rule = audience_pb2.AudienceRule
Field = rules_pb2.ProfileField


def _tag(dimension: str, *values: str, match: int = audience_pb2.TAG_MATCH_ANY_OF) -> Rule:
    return Rule(tag=audience_pb2.TagCondition(dimension=dimension, match=match, values=values))  # type: ignore[arg-type]


def _field(field: int, *texts: str) -> Rule:
    operator = rules_pb2.OPERATOR_EQ if len(texts) == 1 else rules_pb2.OPERATOR_IN
    return Rule(
        condition=rules_pb2.Condition(
            operand=rules_pb2.Operand(field=field),  # type: ignore[arg-type]
            operator=operator,
            values=[rules_pb2.Value(text=text) for text in texts],
        )
    )


def _not(rule: Rule) -> Rule:
    negated = Rule()
    getattr(negated, "not").CopyFrom(rule)
    return negated


def rules() -> dict[str, Rule]:
    """Audiences an operator builds from tags and profile fields only."""
    return {
        # Active women in tier-1 cities: a tag and two profile fields.
        "active-women-tier1": Rule(
            all=audience_pb2.AudienceRuleList(
                rules=[
                    _tag("lifecycle", "active"),
                    _field(Field.PROFILE_FIELD_GENDER, "GENDER_FEMALE"),
                    _field(Field.PROFILE_FIELD_CITY_TIER, "CITY_TIER_1"),
                ]
            )
        ),
        # RFM-important members or gold level: a union of five sets, a third of the members.
        "important-or-gold": Rule(
            any=audience_pb2.AudienceRuleList(
                rules=[_tag("rfm_segment", *IMPORTANT), _field(Field.PROFILE_FIELD_LEVEL, "gold")]
            )
        ),
        # Everyone not churned: the complement of one value, most of the members.
        "not-churned": _not(_tag("lifecycle", "churned")),
        # Young skincare or make-up buyers with no repurchase due, not on the web channel.
        "young-beauty-not-due": Rule(
            all=audience_pb2.AudienceRuleList(
                rules=[
                    _tag("age_band", "18-25", "26-35"),
                    _tag("categories_bought", "skincare", "makeup"),
                    _tag("repurchase_due", "due", match=audience_pb2.TAG_MATCH_NONE_OF),
                    _not(_field(Field.PROFILE_FIELD_REGISTER_CHANNEL, "web")),
                ]
            )
        ),
    }


@dataclass(frozen=True)
class Loaded:
    seconds: float
    bytes: int
    members: int


async def _loaded(log: Path) -> Loaded:
    """Waits for the service's log line saying the bench tenant's bitmaps are loaded."""
    deadline = time.monotonic() + LOAD_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        text = await asyncio.to_thread(log.read_text, errors="replace")
        for line in text.splitlines():
            if FAILED_EVENT in line:
                raise RuntimeError(f"the bitmap index failed to load: {line}")
            if LOADED_EVENT not in line:
                continue
            entry = json.loads(line)
            if entry.get("tenant") == servers.BENCH_TENANT:
                return Loaded(float(entry["seconds"]), int(entry["bytes"]), int(entry["members"]))
        await asyncio.sleep(1)
    raise RuntimeError(f"the bitmap index did not load in {LOAD_TIMEOUT_SECONDS} s")


def _memory(address: str) -> tuple[int, int]:
    """The resident memory of this process's child serving `address`, now and at its peak."""
    wanted = f"MEMBEROPS_AUDIENCE_ADDRESS={address}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) != os.getpid():
                continue
            if wanted not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            status = (entry / "status").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        kib = {
            line.split(":")[0]: int(line.split()[1]) for line in status.splitlines() if line.startswith("Vm")
        }
        return kib["VmRSS"] * 1024, kib["VmHWM"] * 1024
    raise RuntimeError(f"no child process serves {address}")


async def _timed_count(stub: Any, audience_id: str) -> tuple[float, int]:
    request = audience_service_pb2.CountAudienceRequest(name=f"audiences/{audience_id}")
    started = time.perf_counter()
    reply = await stub.CountAudience(request, metadata=servers.AUTH, timeout=1800)
    return (time.perf_counter() - started) * 1000, reply.member_count


async def bench_counts(bitmap_stub: Any, sql_stub: Any) -> tuple[list[str], list[float]]:
    """Each rule counted by both services, interleaved; returns failures and the bitmap p50s."""
    failures: list[str] = []
    medians: list[float] = []
    for audience_id in rules():
        bitmap_ms: list[float] = []
        sql_ms: list[float] = []
        counts: set[int] = set()
        for i in range(max(BITMAP_ROUNDS, SQL_ROUNDS) + 1):  # round 0 warms up and is not counted
            if i <= BITMAP_ROUNDS:
                took, count = await _timed_count(bitmap_stub, audience_id)
                counts.add(count)
                if i:
                    bitmap_ms.append(took)
            if i <= SQL_ROUNDS:
                took, count = await _timed_count(sql_stub, audience_id)
                counts.add(count)
                if i:
                    sql_ms.append(took)
        b50, s50 = statistics.median(bitmap_ms), statistics.median(sql_ms)
        medians.append(b50)
        print(
            f"{audience_id:<22} bitmaps p50 {b50:8.1f} ms ({len(bitmap_ms)} counts)  "
            f"sql p50 {s50:9.1f} ms ({len(sql_ms)})  {s50 / b50:,.0f}x faster  ({min(counts):,} members)"
        )
        if len(counts) != 1:
            failures.append(f"{audience_id}: the bitmap and SQL evaluations disagree: {sorted(counts)}")
    return failures, medians


async def main() -> None:
    members = tag_dataset.members_from_env()
    async with tag_dataset.cached(members) as (dsn, generated):
        print(f"data: {generated.line()}")
        # The services read tagging's published views as the current migrations define them (the
        # cache is generated through the migrations its rows need).
        await dataset.migrate(dsn)
        with tempfile.TemporaryDirectory(prefix="bench10m-") as tmp:
            log = Path(tmp) / "audience.log"
            info = {"MEMBEROPS_LOG_LEVEL": "info"}
            started = time.monotonic()
            async with (
                servers.service("audience", dsn, info, clock=CLOCK, log=log) as bitmap_address,
                servers.service(
                    "audience", dsn, {"MEMBEROPS_AUDIENCE_BITMAPS": "0"}, clock=CLOCK
                ) as sql_address,
                grpc.aio.insecure_channel(bitmap_address) as bitmap_channel,
                grpc.aio.insecure_channel(sql_address) as sql_channel,
            ):
                loaded = await _loaded(log)
                print(
                    f"bitmap index: {loaded.members:,} members loaded in {loaded.seconds:.1f} s "
                    f"(service up to loaded {time.monotonic() - started:.0f} s), "
                    f"memory_bytes {loaded.bytes / 2**20:,.0f} MiB"
                )
                bitmap_stub: Any = audience_service_pb2_grpc.AudienceServiceStub(bitmap_channel)
                sql_stub: Any = audience_service_pb2_grpc.AudienceServiceStub(sql_channel)
                for audience_id, rule in rules().items():
                    await bench_audience.create(bitmap_stub, audience_id, rule)
                failures, medians = await bench_counts(bitmap_stub, sql_stub)
                (with_bitmaps, peak), (without, _) = _memory(bitmap_address), _memory(sql_address)
                print(
                    f"audience service RSS: {with_bitmaps / 2**30:.2f} GiB with bitmaps (peak "
                    f"{peak / 2**30:.2f} GiB, while loading), {without / 2**30:.2f} GiB without (SQL "
                    f"only): the index costs {(with_bitmaps - without) / 2**30:.2f} GiB"
                )
                print(
                    f"target (issue 25): tag-and-profile counts over {members:,} members p50 <= 50 ms; "
                    f"measured {min(medians):.1f}-{max(medians):.1f} ms; memory aim <= 2 GB, "
                    f"measured RSS {with_bitmaps / 2**30:.2f} GiB"
                )
    if failures:
        raise SystemExit("; ".join(failures))
