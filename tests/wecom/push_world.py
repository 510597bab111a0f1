"""What the WeCom sync's tests stand on: a journeys service of their own starting the tenant's sync
on a task queue of their own (the suite's journeys service starts it on a queue no worker polls), a
worker running the sync against a local WeCom, members with a WeCom identity whose customers exist
there, and reads of what WeCom holds and what the sync stored."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from memberops.journeys.v1 import wecom_pb2
from memberops.tagging.v1 import feed_pb2, member_pb2, tagging_service_pb2, tags_pb2
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.worker import Worker

from deploy.wecom_local import LocalWeCom
from runtime.config import Settings
from runtime.db import Database
from tests.conftest import TENANT_WECOM_PUSH, WECOM_PUSH, unique
from tests.wecom.conftest import AES_KEY
from workflows.journeys.channels.wecom import WeComChannel
from workflows.journeys.channels.wecom_results import WeComResultActivities
from workflows.wecom import client as sync_client
from workflows.wecom import sync_store
from workflows.wecom.activities import WeComActivities
from workflows.wecom.payloads import WeComSyncInput
from workflows.wecom.pull_activities import WeComPullActivities
from workflows.wecom.sync_store import SyncState
from workflows.wecom.tagging_reads import TaggingReads
from workflows.wecom.workflow import WeComSyncWorkflow

if TYPE_CHECKING:
    from memberops.journeys.v1.journeys_service_pb2_grpc import JourneyServiceAsyncStub
    from memberops.tagging.v1.tagging_service_pb2_grpc import TaggingServiceAsyncStub

TASK_QUEUE = "wecom-push-tests"
TENANT = TENANT_WECOM_PUSH
STAFF = "zhangsan"
MARK_TAG = "externalcontact/mark_tag"

Sleep = Callable[[float], Awaitable[None]]


def corp_keys() -> dict[str, str]:
    """A corp id and callback token as WeCom issues them (letters and digits only)."""
    return {"corp_id": "ww" + unique("c").replace("-", ""), "token": "T" + unique("t").replace("-", "")}


def fast_sleep(wecom: LocalWeCom) -> Sleep:
    """WeCom's backoff in the local server's time: a minute's quota block passes at once."""

    async def sleep(seconds: float) -> None:
        wecom.advance(seconds)
        await asyncio.sleep(0)

    return sleep


@contextlib.asynccontextmanager
async def syncing(
    client: Client,
    settings: Settings,
    db: Database,
    tagging: TaggingServiceAsyncStub,
    wecom: LocalWeCom,
    sleep: Sleep | None = None,
) -> AsyncIterator[None]:
    """A worker running the tenant's sync against `wecom`, until the block ends (its round in
    flight then is cut off, as a dying worker's is)."""
    activities = WeComActivities(
        db, TaggingReads(tagging, settings.token_for_tenant), wecom.url, sleep=sleep or fast_sleep(wecom)
    )
    pull = WeComPullActivities(db, tagging, settings.token_for_tenant, wecom.url)
    results = WeComResultActivities(db, WeComChannel(db, wecom.url))
    async with Worker(
        client,
        task_queue=TASK_QUEUE,
        workflows=[WeComSyncWorkflow],
        activities=[*activities.all(), *pull.all(), results.read_results],
        # No sticky queue: the next test's worker gets the sync's workflow tasks at once, not
        # after a dead worker's sticky queue timed out (10 s).
        max_cached_workflows=0,
    ):
        yield


async def start_sync(client: Client) -> None:
    """Starts the tenant's sync as a connector put would, with rounds idle for a second at most
    (a rename or a reconciliation waits for the round in progress): the puts then signal it. A
    workflow task a stopped worker held is given to the next worker after 2 s, not the default 10."""
    await client.start_workflow(
        WeComSyncWorkflow.run,
        WeComSyncInput(TENANT, idle_seconds=1.0),
        id=sync_client.workflow_id(TENANT),
        task_queue=TASK_QUEUE,
        task_timeout=dt.timedelta(seconds=2),
    )


async def end_sync(client: Client) -> None:
    """Terminates the tenant's sync if one runs (another module's, started on another queue)."""
    with contextlib.suppress(RPCError):  # none runs
        await client.get_workflow_handle(sync_client.workflow_id(TENANT)).terminate()


async def put_connector(
    journeys: JourneyServiceAsyncStub, wecom: LocalWeCom, keys: dict[str, str], dimensions: Sequence[str]
) -> wecom_pb2.WeComConnector:
    connector = wecom_pb2.WeComConnector(
        corp_id=keys["corp_id"],
        secret=wecom.corp.secret,
        callback_token=keys["token"],
        encoding_aes_key=AES_KEY,
        push_dimensions=list(dimensions),
        enabled=True,
    )
    request = wecom_pb2.PutWeComConnectorRequest(connector=connector)
    answer: wecom_pb2.WeComConnector = await journeys.PutWeComConnector(request, metadata=WECOM_PUSH)
    return answer


async def dimension(
    tagging: TaggingServiceAsyncStub, values: dict[str, str], display_name: str = ""
) -> tuple[str, str]:
    """A MULTI manual dimension with `values` (value -> display name): its name and display name."""
    name = unique("wx").replace("-", "_")
    display = display_name or f"Dim {name[-6:]}"
    definition = tags_pb2.TagDefinition(
        dimension=name,
        display_name=display,
        category=tags_pb2.TAG_CATEGORY_MARKETING,
        kind=tags_pb2.TAG_KIND_MANUAL,
        refresh_policy=tags_pb2.REFRESH_POLICY_SCHEDULED,
        cardinality=tags_pb2.CARDINALITY_MULTI,
        values=[tags_pb2.TagValue(value=v, display_name=d) for v, d in values.items()],
    )
    await tagging.CreateTagDefinition(
        tagging_service_pb2.CreateTagDefinitionRequest(tag_definition=definition), metadata=WECOM_PUSH
    )
    return name, display


async def rename(
    tagging: TaggingServiceAsyncStub, name: str, value: str, display: str, dimension_display: str
) -> None:
    """Gives the dimension and one of its values new display names."""
    found = await tagging.GetTagDefinition(
        tagging_service_pb2.GetTagDefinitionRequest(name=f"tagDefinitions/{name}"), metadata=WECOM_PUSH
    )
    definition = tags_pb2.TagDefinition()
    definition.CopyFrom(found)
    definition.display_name = dimension_display
    for item in definition.values:
        if item.value == value:
            item.display_name = display
    await tagging.UpdateTagDefinition(
        tagging_service_pb2.UpdateTagDefinitionRequest(tag_definition=definition), metadata=WECOM_PUSH
    )


@dataclasses.dataclass(frozen=True)
class Customer:
    member_id: str
    external_userid: str


async def customers(tagging: TaggingServiceAsyncStub, wecom: LocalWeCom, count: int) -> list[Customer]:
    """Members with a WeCom identity (owned by STAFF), each a customer of the local corp."""
    found = []
    for _ in range(count):
        member_id, external = unique("wm"), "wm" + unique("e").replace("-", "")
        wecom.add_customer(external, name=member_id, follow_users=[STAFF])
        member = member_pb2.Member(
            member_id=member_id,
            profile=member_pb2.Profile(nickname="Wen"),
            contact=member_pb2.Contact(wecom_external_userid=external, wecom_staff_userid=STAFF),
        )
        await tagging.UpsertMember(
            tagging_service_pb2.UpsertMemberRequest(member=member), metadata=WECOM_PUSH
        )
        found.append(Customer(member_id, external))
    return found


async def give(
    tagging: TaggingServiceAsyncStub, name: str, value: str, members: Sequence[str], reason: str = "test"
) -> None:
    request = tagging_service_pb2.AddMemberTagsRequest(
        dimension=name, value=value, member_ids=list(members), operator="ops@test", reason=reason
    )
    await tagging.AddMemberTags(request, metadata=WECOM_PUSH)


async def take(tagging: TaggingServiceAsyncStub, name: str, value: str, members: Sequence[str]) -> None:
    request = tagging_service_pb2.RemoveMemberTagsRequest(
        dimension=name, value=value, member_ids=list(members), operator="ops@test", reason="test"
    )
    await tagging.RemoveMemberTags(request, metadata=WECOM_PUSH)


def held(wecom: LocalWeCom, customer: Customer, group_name: str) -> set[str]:
    """The tag names the customer holds in the group, in the local WeCom."""
    return {
        t.tag_name for t in wecom.customer_tags(customer.external_userid, STAFF) if t.group_name == group_name
    }


def marks(wecom: LocalWeCom, *, errcode: int = 0) -> Counter[str]:
    """mark_tag calls per external_userid that WeCom answered with `errcode`."""
    return Counter(c.body.get("external_userid", "") for c in wecom.calls(MARK_TAG) if c.errcode == errcode)


async def state(db: Database) -> SyncState:
    async with db.transaction(TENANT, readonly=True) as conn:
        found = await sync_store.get(conn)
    assert found is not None
    return found


def holding(
    wecom: LocalWeCom, want: dict[Customer, set[str]], group_name: str
) -> Callable[[], Awaitable[Any]]:
    """A probe for `eventually`: every customer holds exactly its names in the group."""

    async def probe() -> bool:
        return all(held(wecom, c, group_name) == names for c, names in want.items())

    return probe


async def caught_up(db: Database, tagging: TaggingServiceAsyncStub) -> bool:
    """Whether the sync has pushed every member and tag change the feed holds (none after its
    cursor, no batch or reconciliation in progress): a probe for `eventually`."""
    found = await state(db)
    if found.pending_end or found.resync_state == "running" or not found.started:
        return False
    request = tagging_service_pb2.ReadFeedRequest(
        after_cursor=found.cursor,
        limit=1,
        kinds=[feed_pb2.FEED_ENTRY_KIND_TAG_CHANGED, feed_pb2.FEED_ENTRY_KIND_MEMBER_CHANGED],
    )
    reply = await tagging.ReadFeed(request, metadata=WECOM_PUSH)
    return not reply.entries
