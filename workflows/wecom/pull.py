"""The pull: WeCom's stored callbacks (journeys.wecom_callbacks) turned into MemberOps' manual tags.

For `change_external_contact` / `edit_external_contact` (and `add_external_contact`), WeCom's event
says only who changed which customer, not what ("编辑企业客户事件": remark or corp tags). So the pull
reads the customer's current tags (`externalcontact/get`), takes the follow_user entry of the staff
member the event names, and in each PULLED dimension compares the tags there that stand for its
values (tag_map_store) with what that relationship held when the pull last looked
(journeys.wecom_seen_tags): what staff added since is added to the member's manual values, what
staff removed since is removed (member found by SearchMembers on the external_userid, tags by
GetMemberTags), with RemoveMemberTags / AddMemberTags, operator = the staff userid, reason `wecom`.
A three-way comparison, not WeCom's state copied: a staff edit (even of a remark) never undoes a
MemberOps change WeCom has not been given yet (a pull-only dimension's operator tags, or a pushed
one's before the push). The first look at a relationship (no base yet) takes WeCom's state. Repeats,
late and reordered callbacks compare the same states again, and a change MemberOps pushed itself
comes back as nothing to do (no ping-pong).

Only values with a WeCom tag are compared: a value MemberOps holds that WeCom has no tag for yet
cannot have been removed by staff. A member whose relationship belongs to another staff member
(`wecom_staff_userid`) is left alone: each staff member's relationship carries its own tags, and
the owner's are the ones the push writes.

Staff can only choose tags that exist: each pull first makes every pulled dimension a corp tag
group with a tag per defined value (wecom-sync's TagLibrary: adopted by name, created, renamed with
MemberOps' display names; nothing asked of WeCom once they exist).

`change_external_tag` (the corp tag library): a deleted tag or group that stands for a value or
dimension is forgotten (the push creates it again) and a full reconciliation asked for; created and
renamed ones change no mapping (ids stay). `shuffle`, or a change type WeCom added after this was
written, asks for a full reconciliation. Each row is marked processed, with its counters and any
reconciliation request, in one transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import grpc
from memberops.tagging.v1 import member_pb2, tagging_service_pb2, tagging_service_pb2_grpc

from runtime.db import Database
from runtime.logs import get_logger
from workflows.wecom import callback_store, connector_store, sync_store, tag_map_store
from workflows.wecom.api import WeComApi, WeComError
from workflows.wecom.callback_store import Callback, Seen
from workflows.wecom.connector_store import Connector
from workflows.wecom.library import TagLibrary
from workflows.wecom.tagging_reads import TaggingReads

log = get_logger("memberops.wecom.pull")

REASON = "wecom"
# Callbacks one pull takes (the sync's round pulls again while a batch comes back full).
BATCH = 50

CONTACT_EVENT = "change_external_contact"
TAG_EVENT = "change_external_tag"
# Changes to a customer's corp tags by a staff member.
TAGGING_CHANGES = frozenset({"edit_external_contact", "add_external_contact"})
# Customer-contact changes that carry no tags (a relationship ended, half-added, a transfer failed).
TAGLESS_CHANGES = frozenset(
    {"del_external_contact", "del_follow_user", "add_half_external_contact", "transfer_fail"}
)
# externalcontact/get's answers for a customer that is no customer (any more): 84061 "不存在外部联系人的
# 关系", 40096 invalid external_userid.
NOT_A_CUSTOMER = frozenset({84061, 40096})
# Tagging's answers when a pulled value cannot be written any more (the dimension retired or no
# longer MANUAL, the value gone from its definition, the member erased): the row is done.
UNWRITABLE = frozenset(
    {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND}
)


@dataclass(frozen=True)
class PullResult:
    """What one pull did: rows processed, manual tag changes made, whether a full reconciliation was
    asked for, and whether more rows wait (the batch was full)."""

    processed: int = 0
    tags_pulled: int = 0
    resync_wanted: bool = False
    more: bool = False


@dataclass(frozen=True)
class Outcome:
    """What became of one callback (the row's `outcome`)."""

    outcome: str
    member_id: str = ""
    tags_pulled: int = 0
    resync: bool = False
    forget_tags: tuple[str, ...] = ()
    forget_groups: tuple[str, ...] = ()
    # What the staff member's relationship holds in WeCom now, to be the next comparison's base.
    seen: Seen | None = None


@dataclass(frozen=True)
class Change:
    """One manual tag change the pull makes."""

    add: bool
    dimension: str
    value: str


@dataclass
class _Values:
    """value -> tag id of each pulled dimension that has WeCom tags, and the reverse."""

    by_dimension: dict[str, dict[str, str]] = field(default_factory=dict)

    def of_tag(self, tag_id: str) -> tuple[str, str] | None:
        for dimension, tags in self.by_dimension.items():
            for value, mapped in tags.items():
                if mapped == tag_id:
                    return dimension, value
        return None


def changes(wecom: Seen, held: Seen, mapped: _Values, base: Seen | None) -> list[Change]:
    """What makes the member follow what staff changed in WeCom, per mapped dimension: with a
    `base` (what WeCom held when the pull last looked), only the values staff added or removed
    since, so a MemberOps change WeCom was not given yet stays; without one (first look, or a
    dimension newly pulled), whatever WeCom holds. Only values that have a WeCom tag now are
    removed (a tag deleted in WeCom was not taken off by staff). Removals first (so a single-valued
    dimension is never asked to hold two), each sorted."""
    removals: list[Change] = []
    additions: list[Change] = []
    for dimension, tags in sorted(mapped.by_dimension.items()):
        there = wecom.get(dimension, set())
        here = held.get(dimension, set())
        before = None if base is None else base.get(dimension)
        if before is None:
            added, removed = there - here, (here & tags.keys()) - there
        else:
            added, removed = (there - before) - here, (before - there) & here & tags.keys()
        removals += [Change(False, dimension, v) for v in sorted(removed)]
        additions += [Change(True, dimension, v) for v in sorted(added)]
    return removals + additions


def request_id(tenant_id: str, callback: Callback, change: Change) -> str:
    """The tagging call's request id: derived from the callback row, so every attempt at one change
    of one callback carries the same id (tagging's writes are idempotent by state)."""
    verb = "add" if change.add else "remove"
    return f"wecom-callback/{tenant_id}/{callback.id}/{verb}/{change.dimension}/{change.value}"


class Pull:
    def __init__(
        self,
        db: Database,
        tagging: tagging_service_pb2_grpc.TaggingServiceAsyncStub,
        token_for_tenant: Callable[[str], str],
        wecom: Callable[[Connector], WeComApi],
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._db = db
        self._tagging = tagging
        self._token_for_tenant = token_for_tenant
        self._wecom = wecom
        self._clock = clock

    async def run(
        self, tenant_id: str, *, limit: int = BATCH, progress: Callable[[], None] = lambda: None
    ) -> PullResult:
        """Processes the oldest `limit` waiting callbacks; `progress` is called after each."""
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            connector = await connector_store.get(conn)
            rows = await callback_store.unprocessed(conn, limit)
        api = self._wecom(connector) if connector is not None and connector.enabled else None
        if connector is not None and api is not None:
            await self._offer(tenant_id, connector, api)
        processed = pulled = 0
        resync = False
        for row in rows:
            outcome = await self._outcome(tenant_id, connector, api, row)
            async with self._db.transaction(tenant_id) as conn:
                if await callback_store.mark_processed(conn, row.id, outcome.outcome, outcome.member_id):
                    if outcome.tags_pulled:
                        await sync_store.count(conn, tags_pulled=outcome.tags_pulled)
                    if outcome.forget_tags:
                        await tag_map_store.forget_tags(conn, outcome.forget_tags)
                    if outcome.forget_groups:
                        await tag_map_store.forget_groups(conn, outcome.forget_groups)
                    if outcome.resync:
                        await sync_store.want_resync(conn)
                    if outcome.seen is not None:
                        await callback_store.save_seen(
                            conn, tenant_id, row.external_userid, row.userid, outcome.member_id, outcome.seen
                        )
                    processed += 1
                    pulled += outcome.tags_pulled
                    resync = resync or outcome.resync
            log.info(
                "wecom callback pulled",
                tenant=tenant_id,
                callback=row.id,
                outcome=outcome.outcome,
                member_id=outcome.member_id,
                tags_pulled=outcome.tags_pulled,
            )
            progress()
        async with self._db.transaction(tenant_id) as conn:
            await callback_store.purge(conn, self._clock() - callback_store.RETENTION)
        return PullResult(processed, pulled, resync, more=len(rows) == limit)

    async def _offer(self, tenant_id: str, connector: Connector, api: WeComApi) -> None:
        """Makes each pulled dimension a group in WeCom with a tag per defined value (adopting
        what exists by name, renaming what MemberOps renamed), so staff have its tags to choose
        and their choices map back. Nothing is asked of WeCom once they exist."""
        if not connector.pull_dimensions:
            return
        reads = TaggingReads(self._tagging, self._token_for_tenant)
        dimensions = await reads.dimensions(tenant_id, sorted(set(connector.pull_dimensions)))
        library = TagLibrary(self._db, tenant_id, api, dimensions, self._clock)
        await library.load()
        await library.ensure({d.name: d.values for d in dimensions})
        await library.rename()

    async def _outcome(
        self, tenant_id: str, connector: Connector | None, api: WeComApi | None, row: Callback
    ) -> Outcome:
        if connector is None or api is None:
            return Outcome("connector_off")
        if row.event == CONTACT_EVENT:
            if row.change_type in TAGGING_CHANGES:
                return await self._contact(tenant_id, connector, api, row)
            if row.change_type in TAGLESS_CHANGES:
                return Outcome("ignored")
            return Outcome("resync", resync=True)
        if row.event == TAG_EVENT:
            return await self._tag_library(tenant_id, row)
        # Other events (customer groups, messages) are not about tags.
        return Outcome("ignored")

    async def _tag_library(self, tenant_id: str, row: Callback) -> Outcome:
        """WeCom's "企业客户标签事件": create / update / delete of a tag or group, and shuffle."""
        if row.change_type in ("create", "update"):
            return Outcome("ignored")
        if row.change_type != "delete":
            return Outcome("resync", resync=True)
        wecom_id = row.body.get("Id", "")
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            if row.body.get("TagType") == "tag_group":
                if await tag_map_store.group_of(conn, wecom_id) is None:
                    return Outcome("ignored")
                return Outcome("forgotten", resync=True, forget_groups=(wecom_id,))
            if await tag_map_store.value_of(conn, wecom_id) is None:
                return Outcome("ignored")
        return Outcome("forgotten", resync=True, forget_tags=(wecom_id,))

    async def _contact(self, tenant_id: str, connector: Connector, api: WeComApi, row: Callback) -> Outcome:
        if not connector.pull_dimensions:
            return Outcome("not_pulled")
        member = await self._member(tenant_id, row.external_userid)
        if member is None:
            return Outcome("no_member")
        owner = member.contact.wecom_staff_userid
        if owner and owner != row.userid:
            return Outcome("other_staff", member.member_id)
        mapped = _Values()
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            for dimension in sorted(set(connector.pull_dimensions)):
                tags = await tag_map_store.tag_ids(conn, dimension)
                if tags:
                    mapped.by_dimension[dimension] = tags
            base = await callback_store.seen(conn, row.external_userid, row.userid)
        if not mapped.by_dimension:
            return Outcome("not_mapped", member.member_id)
        try:
            contact = await api.get_external_contact(row.external_userid)
        except WeComError as error:
            if error.errcode in NOT_A_CUSTOMER:
                return Outcome("not_a_customer", member.member_id)
            raise
        follow = [f for f in contact.get("follow_user", []) if f.get("userid") == row.userid]
        if not follow:
            return Outcome("not_followed", member.member_id)
        wecom: Seen = {dimension: set() for dimension in mapped.by_dimension}
        for tag in follow[0].get("tags", []):
            found = mapped.of_tag(str(tag.get("tag_id", "")))
            if found is not None:
                wecom[found[0]].add(found[1])
        held = await self._held(tenant_id, member.member_id, mapped.by_dimension.keys())
        made = 0
        for change in changes(wecom, held, mapped, base):
            made += await self._write(tenant_id, row, member.member_id, change)
        return Outcome("pulled" if made else "unchanged", member.member_id, made, seen=wecom)

    def _metadata(self, tenant_id: str, request: str = "") -> tuple[tuple[str, str], ...]:
        auth = (("authorization", f"Bearer {self._token_for_tenant(tenant_id)}"),)
        return (*auth, ("x-request-id", request)) if request else auth

    async def _member(self, tenant_id: str, external_userid: str) -> member_pb2.Member | None:
        """The member whose WeCom external_userid it is (SearchMembers also matches nicknames
        containing the query: only the exact identity counts)."""
        if not external_userid:
            return None
        found = await self._tagging.SearchMembers(
            tagging_service_pb2.SearchMembersRequest(query=external_userid[:64], page_size=10),
            metadata=self._metadata(tenant_id),
        )
        exact = [m for m in found.members if m.contact.wecom_external_userid == external_userid]
        return exact[0] if exact else None

    async def _held(self, tenant_id: str, member_id: str, dimensions: Collection[str]) -> dict[str, set[str]]:
        answer = await self._tagging.GetMemberTags(
            tagging_service_pb2.GetMemberTagsRequest(member=f"members/{member_id}"),
            metadata=self._metadata(tenant_id),
        )
        held: dict[str, set[str]] = {}
        for tag in answer.tags:
            if tag.dimension in dimensions and not tag.HasField("valid_to"):
                held.setdefault(tag.dimension, set()).add(tag.value)
        return held

    async def _write(self, tenant_id: str, row: Callback, member_id: str, change: Change) -> int:
        """Makes one change as the staff member; the members changed (0 or 1)."""
        fields = {"dimension": change.dimension, "value": change.value, "operator": row.userid}
        metadata = self._metadata(tenant_id, request_id(tenant_id, row, change))
        try:
            if change.add:
                request = tagging_service_pb2.AddMemberTagsRequest(
                    member_ids=[member_id], reason=REASON, **fields
                )
                answer = await self._tagging.AddMemberTags(request, metadata=metadata)
            else:
                removal = tagging_service_pb2.RemoveMemberTagsRequest(
                    member_ids=[member_id], reason=REASON, **fields
                )
                answer = await self._tagging.RemoveMemberTags(removal, metadata=metadata)
        except grpc.aio.AioRpcError as error:
            if error.code() not in UNWRITABLE:
                raise
            log.warning(
                "wecom tag not pulled",
                tenant=tenant_id,
                callback=row.id,
                dimension=change.dimension,
                code=error.code().name,
                detail=error.details(),
            )
            return 0
        return int(answer.changed_count)
