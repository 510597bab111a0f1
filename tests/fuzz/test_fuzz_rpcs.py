"""Fuzzes every RPC of every service: a valid request, mutated one field at a time.

Every RPC found in the descriptors (tests/fuzz/discovery.py) gets a valid base request
(bases.py), called once as is, then mutated one field at a time (mutations.py). Each answer must
not be UNKNOWN, INTERNAL or UNAVAILABLE; an INVALID_ARGUMENT must carry a BadRequest field violation;
no call may run into its deadline (a hang); and a failed call of a writing RPC must have written
nothing in the fuzz tenant. Findings are collected over the whole run and reported together.

Modes, from the environment:
- default: seed 17, a sample of `SAMPLE` field mutations per RPC plus every whole-request one, well
  under a minute;
- `MEMBEROPS_FUZZ=long` (nightly): every mutation of every field of every RPC, and 16 payloads of
  random bytes per RPC instead of one;
- `MEMBEROPS_FUZZ_SEED=<n>`: another sample (and other random bytes) for either mode;
- `MEMBEROPS_FUZZ_LOG=<file>`: one line per call (RPC, field, mutation, code), to see what was
  accepted as well as what failed (run pytest with -p no:cacheprovider tests/fuzz).
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from runtime import app
from runtime.db import Database
from tests.conftest import TOKEN_ACME, TOKEN_FUZZ
from tests.fuzz import bases, calls, discovery, mutations
from tests.fuzz.discovery import Rpc

LONG = os.environ.get("MEMBEROPS_FUZZ", "") == "long"
SEED = int(os.environ.get("MEMBEROPS_FUZZ_SEED", "17"))
LOG = os.environ.get("MEMBEROPS_FUZZ_LOG", "")
SAMPLE = 24
# The long (nightly) mode runs past the suite's per-test bound on purpose; the default keeps it.
pytestmark = [pytest.mark.timeout(0)] if LONG else []
NOISE = 16 if LONG else 1
# An RPC that hung this many times is not called further (each hang costs a deadline).
MAX_HANGS = 2
# RPCs that change, delete or retire what the others refer to go last, in this order.
_LAST = ("Update", "Delete", "Retire")


def order(rpc: Rpc) -> int:
    return next((i + 1 for i, prefix in enumerate(_LAST) if rpc.name.startswith(prefix)), 0)


@dataclass(frozen=True)
class Finding:
    rpc: str
    path: str
    mutation: str
    code: str
    text: str

    def line(self) -> str:
        return f"{self.rpc} {self.path} [{self.mutation}] -> {self.code}: {self.text}"


@pytest.fixture(scope="module")
async def channels(
    tagging: app.RunningService,
    audience: app.RunningService,
    tasks: app.RunningService,
    journeys: app.RunningService,
) -> AsyncIterator[dict[str, grpc.aio.Channel]]:
    """service (tagging, audience, tasks, journeys) -> a channel to its in-process server."""
    ports = {
        "tagging": tagging.port,
        "audience": audience.port,
        "tasks": tasks.port,
        "journeys": journeys.port,
    }
    opened: dict[str, grpc.aio.Channel] = {}
    for service, port in ports.items():
        opened[service] = calls.open_channel(port)
    yield opened
    for channel in opened.values():
        await channel.close()


def write_log(lines: list[str]) -> None:
    Path(LOG).write_text("\n".join(lines) + "\n")


def chosen(rpc: Rpc, all_mutations: list[mutations.Mutation]) -> list[mutations.Mutation]:
    """Every mutation in the long mode; otherwise a seeded sample of the field mutations (the same
    for an RPC whatever else changes) and every whole-request one."""
    if LONG:
        return all_mutations
    whole = [m for m in all_mutations if m.path == "(request)"]
    fields = [m for m in all_mutations if m.path != "(request)"]
    sample = random.Random(f"{SEED}:{rpc.name}").sample(fields, min(SAMPLE, len(fields)))
    return [*sample, *whole]


class Fuzzer:
    def __init__(self, channels: dict[str, grpc.aio.Channel], db: Database) -> None:
        self.channels = channels
        self.fingerprint = calls.Fingerprint(db)
        self.world = bases.World()
        self.findings: list[Finding] = []
        self.rejected: list[str] = []
        self.calls = 0
        self.codes: Counter[str] = Counter()
        self.log: list[str] = []
        self.hangs: Counter[str] = Counter()

    def channel(self, rpc: Rpc) -> grpc.aio.Channel:
        return self.channels[rpc.service]

    async def setup(self, rpcs: dict[str, Rpc]) -> None:
        """Creates the world the bases refer to, with the bases of the creating RPCs."""
        for name, variant in bases.SETUP:
            rpc = rpcs.get(name)
            if rpc is None:
                continue
            request = bases.base(rpc, self.world, variant).message
            try:
                response = await calls.first_response(self.channel(rpc), rpc, request.SerializeToString())
            except grpc.aio.AioRpcError as error:
                self.rejected.append(f"setup {name} {variant}: {error.code().name} {error.details()}")
                continue
            output = bases.message_class(rpc.method.output_type).FromString(response)
            resource_name = getattr(output, "name", "")
            if resource_name.startswith("snapshots/"):
                self.world.snapshot = resource_name.split("/", 1)[1]

    async def fuzz(self, rpc: Rpc) -> None:
        base = bases.base(rpc, self.world)
        payload = bases.refreshed(base.message, base.fresh).SerializeToString()
        error = await self.one(rpc, "(base)", "none", payload)
        if error is not None:
            self.rejected.append(f"{rpc.name}: {error.code().name} {(error.details() or '')[:160]}")
        todo = chosen(rpc, mutations.mutations(base.message, SEED, NOISE))
        for done, mutation in enumerate(todo):
            if self.hangs[rpc.name] >= MAX_HANGS:
                skipped = f"{len(todo) - done} more mutations skipped after {MAX_HANGS} hangs"
                self.findings.append(Finding(rpc.name, "(rest)", "skipped", "DEADLINE_EXCEEDED", skipped))
                return
            skip = tuple(name for name in mutation.path.replace("[0]", "").split("."))
            request = bases.refreshed(base.message, base.fresh, skip)
            await self.one(rpc, mutation.path, mutation.kind, mutation.build(request))

    async def one(self, rpc: Rpc, path: str, kind: str, payload: bytes) -> grpc.aio.AioRpcError | None:
        """Makes one call and checks its answer; the error it failed with, if any."""
        before = await self.fingerprint.take() if rpc.writes else {}
        error = await calls.call(self.channel(rpc), rpc, payload)
        self.calls += 1
        self.check(rpc, path, kind, error)
        if error is None or not rpc.writes:
            return error
        if not calls.changed(before, await self.fingerprint.take()):
            return error
        # Background consumers write in the tenant too (tagging's refresh lanes and history
        # corrector, audience's dynamic-audience maintainer), after the setup's and earlier
        # successful calls: wait until they owe nothing (quiet.py), and try again, comparing what
        # the rows hold.
        await self.fingerprint.settle()
        before = await self.fingerprint.contents()
        again = await calls.call(self.channel(rpc), rpc, payload)
        tables = calls.changed(before, await self.fingerprint.contents())
        if again is not None and tables:
            code = again.code().name
            self.findings.append(Finding(rpc.name, path, kind, code, f"failed but wrote {tables}"))
        return error

    def check(self, rpc: Rpc, path: str, kind: str, error: grpc.aio.AioRpcError | None) -> None:
        code = "OK" if error is None else error.code().name
        self.codes[code] += 1
        if LOG:
            self.log.append(f"{rpc.name}\t{path}\t{kind}\t{code}\t{'' if error is None else error.details()}")
        problem = calls.judge(error)
        if problem is not None:
            self.findings.append(Finding(rpc.name, path, kind, problem.code, problem.text))
            if error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                self.hangs[rpc.name] += 1


async def test_every_rpc_survives_its_mutations(channels: dict[str, grpc.aio.Channel], db: Database) -> None:
    rpcs = discovery.rpcs()
    fuzzer = Fuzzer(channels, db)
    await fuzzer.setup({rpc.name: rpc for rpc in rpcs})
    await fuzzer.fingerprint.settle()
    # The "wrote nothing" check sees every service's tables, and the rows the setup wrote.
    picture = await fuzzer.fingerprint.take()
    assert {table.split(".")[0].strip('"') for table in picture} == set(calls.SCHEMAS), picture
    assert all(picture[t][0] for t in ('"tagging"."members"', '"audience"."audiences"')), picture
    for rpc in sorted(rpcs, key=order):
        await fuzzer.fuzz(rpc)
    if LOG:
        write_log(fuzzer.log)
    report = "\n".join(finding.line() for finding in fuzzer.findings)
    rejected = "\n".join(fuzzer.rejected)
    codes = ", ".join(f"{code} {n}" for code, n in fuzzer.codes.most_common())
    summary = f"{len(rpcs)} RPCs, {fuzzer.calls} calls ({codes}), seed {SEED}; bases refused:\n{rejected}"
    print(f"fuzz: {summary}")
    assert not fuzzer.findings, f"{len(fuzzer.findings)} findings:\n{report}\n\n{summary}"


@pytest.mark.parametrize(
    ("first", "second"),
    [("wrong", TOKEN_FUZZ), (TOKEN_FUZZ, TOKEN_ACME), (TOKEN_FUZZ, "wrong")],
)
async def test_two_authorization_headers_are_unauthenticated(
    channels: dict[str, grpc.aio.Channel], first: str, second: str
) -> None:
    """An ambiguous caller is nobody: neither header may win, in any service."""
    for rpc in discovery.rpcs():
        if rpc.writes or rpc.client_streaming or rpc.server_streaming:
            continue
        unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channels[rpc.service].unary_unary(rpc.path)
        metadata = (("authorization", f"Bearer {first}"), ("authorization", f"Bearer {second}"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await unary(b"", metadata=metadata, timeout=calls.DEADLINE)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, (rpc.name, caught.value.details())
