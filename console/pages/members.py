"""Members: search (SearchMembers, paged) and one member's page, whose sections each come from
one call made at the same time as the others: profile, current tags and their changes, orders with
refunds, points balance and ledger, tasks, and the journeys they are in with what they were sent.
A section whose call failed says so; the others still show.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from memberops.journeys.v1 import journeys_service_pb2
from memberops.tagging.v1 import tagging_service_pb2
from memberops.tasks.v1 import points_pb2, tasks_pb2, tasks_service_pb2

from console import render
from console.clients import caller

SEARCH_PAGE = 20
SECTION_PAGE = 20
MAX_QUERY = 64


async def search(request: web.Request) -> web.Response:
    query = request.query.get("q", "").strip()
    if not query:
        return render.page(request, "members.html", query="", problem=None, members=None, next_token="")
    found = await caller(request).attempt(
        "tagging",
        "SearchMembers",
        tagging_service_pb2.SearchMembersRequest(
            query=query, page_size=SEARCH_PAGE, page_token=request.query.get("page_token", "")
        ),
    )
    return render.page(
        request,
        "members.html",
        status=found.problem.http_status if found.problem and found.problem.http_status == 400 else 200,
        query=query,
        problem=found.problem,
        members=list(found.value.members) if found.value else None,
        next_token=found.value.next_page_token if found.value else "",
    )


async def member(request: web.Request) -> web.Response:
    member_id = request.match_info["member_id"]
    name = f"members/{member_id}"
    call = caller(request)
    tg, tk, jn = tagging_service_pb2, tasks_service_pb2, journeys_service_pb2
    profile, tags, changes, orders, balance, ledger, tasks, journeys = await asyncio.gather(
        call.attempt("tagging", "GetMember", tg.GetMemberRequest(name=name)),
        call.attempt("tagging", "GetMemberTags", tg.GetMemberTagsRequest(member=name)),
        call.attempt(
            "tagging", "ListTagChanges", tg.ListTagChangesRequest(member=name, page_size=SECTION_PAGE)
        ),
        call.attempt(
            "tagging", "ListMemberOrders", tg.ListMemberOrdersRequest(member=name, page_size=SECTION_PAGE)
        ),
        call.attempt("tasks", "GetBalance", tk.GetBalanceRequest(member_id=member_id)),
        call.attempt(
            "tasks",
            "ListLedgerEntries",
            tk.ListLedgerEntriesRequest(member_id=member_id, page_size=SECTION_PAGE),
        ),
        call.attempt(
            "tasks", "ListMemberTasks", tk.ListMemberTasksRequest(member_id=member_id, page_size=SECTION_PAGE)
        ),
        call.attempt(
            "journeys",
            "ListMemberJourneys",
            jn.ListMemberJourneysRequest(member=name, page_size=SECTION_PAGE),
        ),
    )
    if profile.problem is not None:
        return render.problem_page(request, profile.problem)
    return render.page(
        request,
        "member.html",
        member=profile.value,
        tags=tags,
        changes=changes,
        orders=orders,
        balance=balance,
        ledger=ledger,
        tasks=tasks,
        journeys=journeys,
        reason_name=lambda r: points_pb2.Reason.Name(r).removeprefix("REASON_").lower(),
        task_state=lambda s: tasks_pb2.MemberTaskState.Name(s).removeprefix("MEMBER_TASK_STATE_").lower(),
    )


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/members", search)
    router.add_get("/members/{member_id}", member)
