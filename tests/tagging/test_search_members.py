"""SearchMembers: by id, phone (E.164 or a mainland mobile's 11 digits), WeCom external_userid or
nickname (contains, any case); exact matches first, then nicknames by length and id; pages that
lose and repeat nothing."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from memberops.tagging.v1 import member_pb2, tagging_service_pb2

from runtime import app
from tests.conftest import ACME, GLOBEX, unique
from tests.erasure_world import METADATA as UMBRELLA
from tests.erasure_world import Person, create_person, erase
from tests.grpc_helpers import bad, failure

if TYPE_CHECKING:
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub as Stub


def mobile() -> str:
    """A mainland mobile's 11 digits no other test uses."""
    return f"139{uuid.uuid4().int % 10**8:08d}"


async def upsert(
    stub: Stub, nickname: str = "", phone: str = "", member_id: str = "", metadata: Any = ACME
) -> str:
    member_id = member_id or unique("sm")
    member = member_pb2.Member(
        member_id=member_id,
        profile=member_pb2.Profile(nickname=nickname),
        contact=member_pb2.Contact(phone=phone),
    )
    await stub.UpsertMember(tagging_service_pb2.UpsertMemberRequest(member=member), metadata=metadata)
    return member_id


async def search(
    stub: Stub, query: str, page_size: int = 0, page_token: str = "", metadata: Any = ACME
) -> tagging_service_pb2.SearchMembersResponse:
    request = tagging_service_pb2.SearchMembersRequest(
        query=query, page_size=page_size, page_token=page_token
    )
    return await stub.SearchMembers(request, metadata=metadata)


async def found(stub: Stub, query: str, metadata: Any = ACME) -> list[str]:
    return [m.member_id for m in (await search(stub, query, 100, metadata=metadata)).members]


async def test_a_member_is_found_by_id_phone_and_nickname(tagging_stub: Stub) -> None:
    digits, tag = mobile(), uuid.uuid4().hex[:10]
    member_id = await upsert(tagging_stub, nickname=f"Lily-{tag}-Wang", phone=f"+86{digits}")

    assert await found(tagging_stub, member_id) == [member_id]
    assert await found(tagging_stub, f"+86{digits}") == [member_id]
    assert await found(tagging_stub, digits) == [member_id]
    assert await found(tagging_stub, f" {digits[:3]} {digits[3:7]}-{digits[7:]} ") == [member_id]
    assert await found(tagging_stub, f"lily-{tag.upper()}-w") == [member_id]
    response = await search(tagging_stub, tag)
    assert [m.member_id for m in response.members] == [member_id]
    assert response.members[0].profile.nickname == f"Lily-{tag}-Wang"
    assert response.next_page_token == ""


async def test_exact_matches_come_first_then_nicknames_by_length_and_id(tagging_stub: Stub) -> None:
    tag = uuid.uuid4().hex[:10]
    digits = mobile()
    # The id and the phone both match exactly; nicknames contain the text at various lengths.
    by_id = await upsert(tagging_stub, nickname="someone", member_id=f"zz{tag}")
    by_phone = [await upsert(tagging_stub, phone=f"+86{digits}", nickname=f"x{tag}") for _ in range(2)]
    long_name = await upsert(tagging_stub, nickname=f"a much longer name zz{tag}")
    short_names = sorted([await upsert(tagging_stub, nickname=f"ZZ{tag}!") for _ in range(2)])
    shortest = await upsert(tagging_stub, nickname=f"zz{tag}")

    assert await found(tagging_stub, f"zz{tag}") == [by_id, shortest, *short_names, long_name]
    # A phone's members are exact matches, and are not listed again for their nicknames.
    assert await found(tagging_stub, digits) == sorted(by_phone)


async def test_pages_lose_and_repeat_nothing(tagging_stub: Stub) -> None:
    tag = uuid.uuid4().hex[:10]
    exact = await upsert(tagging_stub, member_id=f"pg{tag}", nickname="none")
    named = [await upsert(tagging_stub, nickname=f"{'_' * (i % 4)}pg{tag}") for i in range(9)]
    everything = await found(tagging_stub, f"pg{tag}")
    assert everything[0] == exact and sorted(everything[1:]) == sorted(named)

    pages: list[list[str]] = []
    token = ""
    while True:
        response = await search(tagging_stub, f"pg{tag}", page_size=3, page_token=token)
        pages.append([m.member_id for m in response.members])
        token = response.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert [m for p in pages for m in p] == everything


async def test_like_wildcards_in_the_text_are_plain_characters(tagging_stub: Stub) -> None:
    tag = uuid.uuid4().hex[:10]
    percent = await upsert(tagging_stub, nickname=f"{tag}50%_off")
    await upsert(tagging_stub, nickname=f"{tag}50xxoff")
    backslash = await upsert(tagging_stub, nickname=f"{tag}50\\off")
    assert await found(tagging_stub, f"{tag}50%_") == [percent]
    assert await found(tagging_stub, f"{tag}50\\") == [backslash]


async def test_other_tenants_members_are_not_found(tagging_stub: Stub) -> None:
    tag = uuid.uuid4().hex[:10]
    digits = mobile()
    theirs = await upsert(tagging_stub, nickname=f"t{tag}", phone=f"+86{digits}", metadata=GLOBEX)
    assert await found(tagging_stub, tag) == []
    assert await found(tagging_stub, digits) == []
    assert await found(tagging_stub, theirs) == []
    assert await found(tagging_stub, tag, metadata=GLOBEX) == [theirs]


@pytest.fixture(scope="module")
def peers(tasks: app.RunningService, journeys: app.RunningService, audience: app.RunningService) -> None:
    """EraseMember calls every peer, so they run."""


async def test_an_erased_member_is_not_found_by_old_phone_or_nickname(
    tagging_stub: Stub, peers: None
) -> None:
    person = Person()
    await create_person(tagging_stub, person)
    assert await found(tagging_stub, person.nickname.upper(), UMBRELLA) == [person.member_id]
    assert await found(tagging_stub, person.phone[3:], UMBRELLA) == [person.member_id]
    assert await found(tagging_stub, person.wecom_external_userid, UMBRELLA) == [person.member_id]

    erased = await erase(tagging_stub, person.member_id, unique("req"))

    for query in (
        person.member_id,
        person.phone,
        person.phone[3:],
        person.nickname,
        person.nickname[2:],
        person.wecom_external_userid,
    ):
        assert await found(tagging_stub, query, UMBRELLA) == [], query
    # The pseudonym's row holds the member's business facts, and only its own id finds it.
    assert await found(tagging_stub, erased.pseudonym, UMBRELLA) == [erased.pseudonym]


@pytest.mark.parametrize(
    ("request_fields", "path"),
    [
        ({"query": ""}, "query"),
        ({"query": "   "}, "query"),
        ({"query": "x" * 65}, "query"),
        ({"query": "x", "page_size": -1}, "page_size"),
        ({"query": "x", "page_size": 101}, "page_size"),
        ({"query": "x", "page_token": "not-a-token"}, "page_token"),
    ],
)
async def test_bad_requests_name_the_field(
    tagging_stub: Stub, request_fields: dict[str, Any], path: str
) -> None:
    request = tagging_service_pb2.SearchMembersRequest(**request_fields)
    await bad(tagging_stub.SearchMembers(request, metadata=ACME), path)


async def test_a_token_serves_only_the_query_it_came_from(tagging_stub: Stub) -> None:
    tag = uuid.uuid4().hex[:10]
    for _ in range(2):
        await upsert(tagging_stub, nickname=f"tk{tag}")
    token = (await search(tagging_stub, f"tk{tag}", page_size=1)).next_page_token
    assert token
    await bad(
        tagging_stub.SearchMembers(
            tagging_service_pb2.SearchMembersRequest(query=f"k{tag}", page_token=token), metadata=ACME
        ),
        "page_token",
    )
    error = await failure(
        tagging_stub.SearchMembers(tagging_service_pb2.SearchMembersRequest(query="x"), metadata=())
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
