"""A member id that can never be valid is INVALID_ARGUMENT naming the field, by tagging's rule,
in every tasks RPC that takes one: never UNAVAILABLE, which a client would retry forever."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from grpc.aio import AioRpcError, Metadata
from memberops.tasks.v1 import tasks_service_pb2 as pb

from runtime import peer_calls
from runtime.errors import Unavailable
from runtime.peer_calls import PeerFailed
from services.tasks.peers import Peers
from tests.conftest import ACME, TENANT_ACME, unique
from tests.grpc_helpers import bad
from tests.tasks.points_helpers import TASK
from tests.tasks.test_bad_input import earn_request, written

if TYPE_CHECKING:
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

    from runtime.config import Settings
    from runtime.db import Database

BAD_IDS = ["a b", "x" * 65, "m-😀", "' OR 1=1;--"]
TASK_NAME = "tasks/no-such-task"
Call = Callable[["TasksStub", str], Awaitable[Any]]


def _req() -> str:
    return unique("req")


# (rpc, field the id goes in, call with that id); the other fields are valid.
CALLS: list[tuple[str, str, Call]] = [
    ("EarnPoints", "member_id", lambda s, m: s.EarnPoints(earn_request(m), metadata=ACME)),
    (
        "SpendPoints",
        "member_id",
        lambda s, m: s.SpendPoints(
            pb.SpendPointsRequest(member_id=m, amount=1, reference="r", request_id=_req()), metadata=ACME
        ),
    ),
    (
        "AdjustPoints",
        "member_id",
        lambda s, m: s.AdjustPoints(
            pb.AdjustPointsRequest(member_id=m, delta=5, operator="ops", note="why", request_id=_req()),
            metadata=ACME,
        ),
    ),
    (
        "ReverseOrderPoints",
        "member_id",
        lambda s, m: s.ReverseOrderPoints(
            pb.ReverseOrderPointsRequest(member_id=m, order_id="o-1"), metadata=ACME
        ),
    ),
    ("GetBalance", "member_id", lambda s, m: s.GetBalance(pb.GetBalanceRequest(member_id=m), metadata=ACME)),
    (
        "ListLedgerEntries",
        "member_id",
        lambda s, m: s.ListLedgerEntries(pb.ListLedgerEntriesRequest(member_id=m), metadata=ACME),
    ),
    (
        "Redeem",
        "member_id",
        lambda s, m: s.Redeem(
            pb.RedeemRequest(member_id=m, reward_id="rw-1", request_id=_req()), metadata=ACME
        ),
    ),
    (
        "GetLeaderboard",
        "member_id",
        lambda s, m: s.GetLeaderboard(
            pb.GetLeaderboardRequest(period=pb.LEADERBOARD_PERIOD_WEEK, member_id=m), metadata=ACME
        ),
    ),
    (
        "ListMemberTasks",
        "member_id",
        lambda s, m: s.ListMemberTasks(pb.ListMemberTasksRequest(member_id=m), metadata=ACME),
    ),
    (
        "SignIn",
        "member_id",
        lambda s, m: s.SignIn(
            pb.SignInRequest(task=TASK_NAME, member_id=m, request_id=_req()), metadata=ACME
        ),
    ),
    (
        "GetStreak",
        "member_id",
        lambda s, m: s.GetStreak(pb.GetStreakRequest(task=TASK_NAME, member_id=m), metadata=ACME),
    ),
    (
        "RecordShare",
        "member_id",
        lambda s, m: s.RecordShare(
            pb.RecordShareRequest(task=TASK_NAME, member_id=m, target="friend", request_id=_req()),
            metadata=ACME,
        ),
    ),
    (
        "RecordInvite",
        "inviter_member_id",
        lambda s, m: s.RecordInvite(
            pb.RecordInviteRequest(
                task=TASK_NAME, inviter_member_id=m, invitee_member_id=unique(), request_id=_req()
            ),
            metadata=ACME,
        ),
    ),
    (
        "RecordInvite",
        "invitee_member_id",
        lambda s, m: s.RecordInvite(
            pb.RecordInviteRequest(
                task=TASK_NAME, inviter_member_id=unique(), invitee_member_id=m, request_id=_req()
            ),
            metadata=ACME,
        ),
    ),
    (
        "EnrolTask",
        "member_id",
        lambda s, m: s.EnrolTask(pb.EnrolTaskRequest(task=TASK_NAME, member_id=m), metadata=ACME),
    ),
    (
        "ClaimTaskReward",
        "member_id",
        lambda s, m: s.ClaimTaskReward(
            pb.ClaimTaskRewardRequest(task=TASK_NAME, member_id=m, request_id=_req()), metadata=ACME
        ),
    ),
    (
        "GetMemberLevel",
        "member_id",
        lambda s, m: s.GetMemberLevel(pb.GetMemberLevelRequest(member_id=m), metadata=ACME),
    ),
]


@pytest.mark.parametrize(("rpc", "path", "call"), CALLS, ids=[f"{r}.{p}" for r, p, _ in CALLS])
@pytest.mark.parametrize("member_id", BAD_IDS, ids=["space", "65-chars", "emoji", "sql"])
async def test_a_member_id_that_can_never_be_valid_is_invalid_argument(
    tasks_stub: TasksStub, db: Database, rpc: str, path: str, call: Call, member_id: str
) -> None:
    await bad(call(tasks_stub, member_id), path, "1-64 characters")
    assert await written(db, member_id) == 0


async def test_an_earning_names_every_bad_member_field_at_once(tasks_stub: TasksStub) -> None:
    request = earn_request("a b", reason=TASK, reference="")
    await bad(tasks_stub.EarnPoints(request, metadata=ACME), "member_id", "1-64 characters")
    await bad(tasks_stub.EarnPoints(request, metadata=ACME), "reference", "required")


# --- what tagging answers, as the domain sees it ---------------------------------------------------


async def test_an_id_tagging_refuses_names_no_member(peers: Peers) -> None:
    """Tagging's INVALID_ARGUMENT for an id is an answer, not an outage: no such member."""
    assert await peers.member_exists(TENANT_ACME, "a b") is False
    assert await peers.profile_fields(TENANT_ACME, "a b") is None


async def test_a_peer_that_does_not_answer_is_unavailable(tasks_settings: Settings) -> None:
    nowhere = Peers(dataclasses.replace(tasks_settings, tagging_address="127.0.0.1:9"))
    try:
        with pytest.raises(Unavailable):
            await nowhere.member_exists(TENANT_ACME, unique())
    finally:
        await nowhere.close()


async def _failing(code: grpc.StatusCode) -> object:
    raise AioRpcError(code, Metadata(), Metadata(), details="from the test")


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (grpc.StatusCode.NOT_FOUND, None),
        (grpc.StatusCode.INVALID_ARGUMENT, None),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, Unavailable),
        (grpc.StatusCode.INTERNAL, PeerFailed),
        (grpc.StatusCode.UNAUTHENTICATED, PeerFailed),
        (grpc.StatusCode.PERMISSION_DENIED, PeerFailed),
    ],
)
async def test_what_each_peer_code_means(code: grpc.StatusCode, outcome: type[Exception] | None) -> None:
    """Only a peer that did not answer in time is UNAVAILABLE (retry later); a peer that answered
    that the thing does not or cannot exist is none; anything else is our fault, not the caller's."""
    if outcome is None:
        assert await peer_calls.answer("tagging", _failing(code)) is None
    else:
        with pytest.raises(outcome):
            await peer_calls.answer("tagging", _failing(code))
