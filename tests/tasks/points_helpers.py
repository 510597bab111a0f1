"""Points calls of the tasks service the tests share (earn, spend, balances, the ledger)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memberops.tasks.v1 import points_pb2, tasks_service_pb2

from tests.conftest import ACME, unique

if TYPE_CHECKING:
    from memberops.tasks.v1.tasks_service_pb2_grpc import TasksServiceAsyncStub as TasksStub

TASK, ORDER = points_pb2.REASON_TASK, points_pb2.REASON_ORDER
NEVER, ROLLING = points_pb2.EXPIRY_POLICY_NEVER, points_pb2.EXPIRY_POLICY_ROLLING_DAYS


async def earn(
    stub: TasksStub,
    member_id: str,
    amount: int,
    *,
    reason: int = TASK,
    reference: str = "task-1",
    policy: int = NEVER,
    days: int = 0,
    window: int = 0,
    request_id: str | None = None,
    metadata: Any = ACME,
) -> points_pb2.LedgerEntry:
    request = tasks_service_pb2.EarnPointsRequest(
        member_id=member_id,
        amount=amount,
        reason=reason,  # type: ignore[arg-type]
        reference=reference,
        expiry_policy=policy,  # type: ignore[arg-type]
        expiry_days=days,
        return_window_days=window,
        request_id=request_id or unique("req"),
    )
    return await stub.EarnPoints(request, metadata=metadata)


async def spend(
    stub: TasksStub, member_id: str, amount: int, request_id: str | None = None, metadata: Any = ACME
) -> points_pb2.LedgerEntry:
    request = tasks_service_pb2.SpendPointsRequest(
        member_id=member_id, amount=amount, reference="goods-1", request_id=request_id or unique("req")
    )
    return await stub.SpendPoints(request, metadata=metadata)


async def balance(
    stub: TasksStub, member_id: str, within_days: int = 0, metadata: Any = ACME
) -> points_pb2.Balance:
    request = tasks_service_pb2.GetBalanceRequest(member_id=member_id, expiring_within_days=within_days)
    return await stub.GetBalance(request, metadata=metadata)


async def all_entries(stub: TasksStub, member_id: str, metadata: Any = ACME) -> list[points_pb2.LedgerEntry]:
    entries: list[points_pb2.LedgerEntry] = []
    token = ""
    while True:
        request = tasks_service_pb2.ListLedgerEntriesRequest(
            member_id=member_id, page_size=7, page_token=token
        )
        page = await stub.ListLedgerEntries(request, metadata=metadata)
        entries.extend(page.entries)
        token = page.next_page_token
        if not token:
            return entries
