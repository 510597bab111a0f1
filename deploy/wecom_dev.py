"""The local WeCom of `make up`, on when MEMBEROPS_DEV_WECOM=1 (off by default).

It runs the local WeCom server (deploy/wecom_local, faithful to WeCom's API and callbacks) as one
more process of the stack, points the worker and the journeys service at it, gives the dev tenant a
WeCom connector and shows the round trip WeCom is for: the demo member's tags appear on the
customer in WeCom, a tag a staff member sets there comes back as a manual tag, and the member's
journey messages go out through WeCom's customer-message API.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from memberops.journeys.v1 import journeys_service_pb2_grpc, wecom_pb2
from memberops.tagging.v1 import member_pb2, tagging_service_pb2, tagging_service_pb2_grpc, tags_pb2

from runtime.config import Settings
from workflows.journeys import local_time
from workflows.journeys.channels.config import ChannelSettings
from workflows.journeys.shipped import NEW_CUSTOMER

T = TypeVar("T")

# The dev corp: its id, the customer-contact secret and the callback Token and EncodingAESKey that
# the local server and the dev tenant's connector share (dev values, never a real corp's).
CORP_ID = "wwmemberopsdev0001"
SECRET = "dev-wecom-secret-0123456789"
TOKEN = "devtoken0123"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
STAFF = "zhangsan"
CUSTOMER = "wmdemo1customer"
# The MANUAL dimension staff set in WeCom, and the dimensions MemberOps pushes there.
STAFF_DIMENSION = "staff_label"
STAFF_VALUE = "vip_care"
PUSHED = ("lifecycle", "categories_bought")
# The push follows tagging's feed in rounds; a staff edit comes back through a callback and a round.
ROUND_TRIP_SECONDS = 30.0


@dataclass(frozen=True)
class DevWeCom:
    api_port: int
    callback_address: str

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def callback_url(self, tenant_id: str) -> str:
        return f"http://{self.callback_address}/wecom/callback/{tenant_id}"

    def argv(self, python: str, tenant_id: str) -> list[str]:
        return [
            python,
            *("-m", "deploy.wecom_local", "--port", str(self.api_port)),
            *("--callback-url", self.callback_url(tenant_id), "--corp-id", CORP_ID, "--secret", SECRET),
            *("--token", TOKEN, "--aes-key", AES_KEY),
        ]

    def service_env(self) -> dict[str, str]:
        """What the worker and the journeys service need to reach it and to be reached."""
        return {
            "MEMBEROPS_WECOM_API_URL": self.api_url,
            "MEMBEROPS_WECOM_CALLBACK_ADDRESS": self.callback_address,
        }


def configured(env: Mapping[str, str], port: int) -> DevWeCom | None:
    """The local WeCom when MEMBEROPS_DEV_WECOM is on; `port` is its API's (the callbacks go to
    MEMBEROPS_WECOM_CALLBACK_ADDRESS, 127.0.0.1:8097 unless set)."""
    if env.get("MEMBEROPS_DEV_WECOM", "").lower() not in ("1", "true"):
        return None
    return DevWeCom(port, env.get("MEMBEROPS_WECOM_CALLBACK_ADDRESS") or "127.0.0.1:8097")


def _local(wecom: DevWeCom, path: str, body: Mapping[str, Any] | None = None) -> Any:
    """One call to the local server's `/_local` controls (GET without a body, else POST)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{wecom.api_url}/_local/{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.loads(answer.read() or b"null")


@dataclass(frozen=True)
class WeComDemo:
    pushed: list[str]  # `group/tag` on the customer in WeCom
    pulled: str  # the manual tag the staff member's edit made
    message: str  # what the member's journey sent through WeCom, or why nothing yet


def contact() -> member_pb2.Contact:
    """The demo member as the local WeCom's customer, who prefers WeCom."""
    return member_pb2.Contact(
        wecom_external_userid=CUSTOMER, wecom_staff_userid=STAFF, preferred_channel=member_pb2.CHANNEL_WECOM
    )


async def connect(settings: Settings, wecom: DevWeCom, token: str) -> None:
    """The corp's staff member and customer, the MANUAL dimension staff set, and the tenant's
    connector: before the demo member's first order, so their journey can reach them on WeCom."""
    auth = (("authorization", f"Bearer {token}"),)
    await asyncio.to_thread(_local, wecom, "staff", {"userid": STAFF})
    await asyncio.to_thread(
        _local, wecom, "customers", {"external_userid": CUSTOMER, "name": "Xiao Li", "follow_users": [STAFF]}
    )
    async with grpc.aio.insecure_channel(settings.tagging_address) as channel:
        await _staff_dimension(tagging_service_pb2_grpc.TaggingServiceStub(channel), auth)
    async with grpc.aio.insecure_channel(settings.journeys_address) as channel:
        connector = wecom_pb2.WeComConnector(
            corp_id=CORP_ID,
            secret=SECRET,
            callback_token=TOKEN,
            encoding_aes_key=AES_KEY,
            push_dimensions=list(PUSHED),
            pull_dimensions=[STAFF_DIMENSION],
            enabled=True,
        )
        await journeys_service_pb2_grpc.JourneyServiceStub(channel).PutWeComConnector(
            wecom_pb2.PutWeComConnectorRequest(connector=connector), metadata=auth, timeout=10
        )


async def show(settings: Settings, wecom: DevWeCom, token: str, member_id: str, journey: str) -> WeComDemo:
    """Both directions, after the demo member's order: their tags appear on the customer in WeCom,
    and a tag a staff member sets there comes back; and what their journey sent through WeCom."""
    auth = (("authorization", f"Bearer {token}"),)
    pushed = await _until(lambda: _pushed(wecom), "the member's tags on the customer in WeCom")
    tag_id = await _until(lambda: _staff_tag_id(wecom), f"the WeCom tag group of {STAFF_DIMENSION}")
    await asyncio.to_thread(
        _local, wecom, "staff_edit_tags", {"userid": STAFF, "external_userid": CUSTOMER, "add": [tag_id]}
    )
    async with grpc.aio.insecure_channel(settings.tagging_address) as channel:
        tagging = tagging_service_pb2_grpc.TaggingServiceStub(channel)
        pulled = await _until(lambda: _pulled(tagging, auth, member_id), "the staff's tag in MemberOps")
    return WeComDemo(pushed, pulled, await _message(wecom, journey))


def quiet_now(now: dt.datetime) -> dt.datetime | None:
    """When the new-customer journey's quiet hours end for the demo member (who names no zone, so
    the default's), or None when they are not in them now."""
    tz = local_time.zone("", ChannelSettings().default_time_zone)
    return local_time.quiet_until(now, tz, NEW_CUSTOMER.quiet_hours)


async def _message(wecom: DevWeCom, journey: str) -> str:
    """The welcome the member's new-customer run sent through WeCom; a run in its holdout arm, or
    one holding for the journey's quiet hours, sends nothing now, and that is said instead."""
    if "arm treated" not in journey:
        return f"nothing sent now ({journey or 'no journey run'})"
    quiet_end = quiet_now(dt.datetime.now(dt.UTC))
    if quiet_end is not None:
        return f"the welcome waits for the journey's quiet hours to end ({quiet_end:%Y-%m-%d %H:%M %Z})"

    async def sent() -> str | None:
        for message in await asyncio.to_thread(_local, wecom, "messages") or ():
            if CUSTOMER in message.get("results", {}):
                return f"{message['sender']} -> {CUSTOMER}: {message['content']!r}"
        return None

    return await _until(sent, "the journey's WeCom message")


async def _staff_dimension(tagging: Any, auth: Any) -> None:
    definition = tags_pb2.TagDefinition(
        dimension=STAFF_DIMENSION,
        display_name="Staff label",
        category=tags_pb2.TAG_CATEGORY_MARKETING,
        kind=tags_pb2.TAG_KIND_MANUAL,
        refresh_policy=tags_pb2.REFRESH_POLICY_SCHEDULED,
        cardinality=tags_pb2.CARDINALITY_MULTI,
        values=[
            tags_pb2.TagValue(value=STAFF_VALUE, display_name="VIP care"),
            tags_pb2.TagValue(value="prefers_tea", display_name="Prefers tea"),
        ],
    )
    try:
        await tagging.CreateTagDefinition(
            tagging_service_pb2.CreateTagDefinitionRequest(tag_definition=definition),
            metadata=auth,
            timeout=10,
        )
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise


async def _pushed(wecom: DevWeCom) -> list[str] | None:
    held = await asyncio.to_thread(_local, wecom, f"customers/{CUSTOMER}/tags")
    tags = sorted(f"{t['group_name']}/{t['tag_name']}" for t in held or ())
    return tags if len(tags) >= len(PUSHED) else None


async def _staff_tag_id(wecom: DevWeCom) -> str | None:
    for group in await asyncio.to_thread(_local, wecom, "tags") or ():
        for tag in group.get("tag", ()):
            if tag.get("name") == "VIP care":
                return str(tag["id"])
    return None


async def _pulled(tagging: Any, auth: Any, member_id: str) -> str | None:
    reply = await tagging.GetMemberTags(
        tagging_service_pb2.GetMemberTagsRequest(member=f"members/{member_id}"), metadata=auth, timeout=10
    )
    for tag in reply.tags:
        if tag.dimension == STAFF_DIMENSION and tag.value == STAFF_VALUE:
            return f"{tag.dimension}={tag.value} (set by {tag.set_by}, reason {tag.reason})"
    return None


async def _until(check: Callable[[], Awaitable[T | None]], what: str) -> T:
    deadline = asyncio.get_running_loop().time() + ROUND_TRIP_SECONDS
    while True:
        try:
            found = await check()
        except (urllib.error.URLError, OSError):
            found = None
        if found:
            return found
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"{what} did not show within {ROUND_TRIP_SECONDS:.0f} s")
        await asyncio.sleep(0.3)


def describe(demo: WeComDemo) -> str:
    return (
        f"WeCom (local):  on the customer in WeCom: {', '.join(demo.pushed)}\n"
        f"                a staff member's tag came back: {demo.pulled}\n"
        f"                the journey through WeCom: {demo.message}"
    )
