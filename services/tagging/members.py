"""Members: validation and the rules of storing them. Plain Python, no gRPC and no SQL."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Sequence
from typing import Any

from runtime import checks, zones
from runtime.db import Connection, Database
from runtime.errors import Aborted, AlreadyExists, FieldViolation, InvalidArgument, NotFound, Violations
from services.tagging import feed_store, member_store, refresh_store
from services.tagging.backfill_refresh import BackfillRefresh
from services.tagging.domain import Channel, CityTier, Contact, FeedKind, Gender, Member, MemberInput, Profile
from services.tagging.realtime import RealTimeTags, input_bits
from services.tagging.rules import Input

ATTRIBUTE_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTES_BYTES = 8 * 1024
MAX_TEXT = 64
MAX_LEVEL = 32
EARLIEST_BIRTHDAY = dt.date(1900, 1, 1)
PHONE = re.compile(r"^\+[1-9][0-9]{6,14}\Z")
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+\Z")
MAX_EMAIL = 254
# WeCom's identifiers as its external-contact API hands them out: an external_userid ("wmXXXX...",
# letters, digits, _ and -) and a staff userid (the corp's account names also take . and @).
WECOM_EXTERNAL_USERID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
WECOM_STAFF_USERID = re.compile(r"^[A-Za-z0-9_.@-]{1,64}\Z")
MAX_IMPORT_BATCH = 10_000
MAX_BATCH_GET = 10_000
# A rejected batch lists violations up to about this many characters: they travel twice (message
# and details, base64) in the call's trailers, which gRPC clients cap at 8 KiB by default; beyond
# that the caller would get RESOURCE_EXHAUSTED instead of the list.
MAX_REPORTED_CHARS = 1_500


def validate(member: MemberInput, now: dt.datetime, path: str = "member", *, whole: bool = True) -> None:
    """Raises InvalidArgument naming every bad field of `member`. `whole=False` (an update, whose
    other fields are the stored ones) leaves out the rules between fields: `check_pairs` checks
    them on the merged member."""
    violations = Violations()
    checks.natural_id(member.member_id, violations, f"{path}.member_id")
    profile, p = member.profile, f"{path}.profile"
    if profile.gender not in Gender.__members__.values():
        violations.add(f"{p}.gender", f"unknown value {profile.gender}")
    if profile.city_tier not in CityTier.__members__.values():
        violations.add(f"{p}.city_tier", f"unknown value {profile.city_tier}")
    if profile.birthday is not None and not EARLIEST_BIRTHDAY <= profile.birthday <= now.date():
        violations.add(f"{p}.birthday", f"must lie between {EARLIEST_BIRTHDAY} and today")
    if profile.register_time is not None:
        # Not before the earliest time the services accept: year 1 fits Python and PostgreSQL but
        # is no registration, and figures such as days since registration would be nonsense.
        checks.past_time(profile.register_time, now, violations, f"{p}.register_time")
    for name in ("city", "register_channel", "nickname"):
        checks.text(getattr(profile, name), MAX_TEXT, violations, f"{p}.{name}")
    checks.text(profile.level, MAX_LEVEL, violations, f"{p}.level")
    _validate_attributes(member.attributes, violations, f"{path}.attributes")
    _validate_contact(member.contact, violations, f"{path}.contact")
    if whole:
        _check_wecom_pair(member.contact, violations, f"{path}.contact")
    violations.raise_if_any()


def check_pairs(member: MemberInput, path: str = "member") -> None:
    """Raises InvalidArgument when fields that go together do not (after an update's merge)."""
    violations = Violations()
    _check_wecom_pair(member.contact, violations, f"{path}.contact")
    violations.raise_if_any()


def _check_wecom_pair(contact: Contact, violations: Violations, path: str) -> None:
    if contact.wecom_staff_userid and not contact.wecom_external_userid:
        violations.add(
            f"{path}.wecom_staff_userid",
            "is set only with wecom_external_userid (the staff member owns a WeCom contact)",
        )


def validate_batch(members: Sequence[MemberInput], now: dt.datetime, path: str) -> None:
    """Raises InvalidArgument for a batch of the wrong size, bad members, or a member id or WeCom
    external_userid given twice."""
    if not 1 <= len(members) <= MAX_IMPORT_BATCH:
        raise InvalidArgument.field(path, f"must hold 1-{MAX_IMPORT_BATCH} members")
    found: list[FieldViolation] = []
    first_index: dict[str, int] = {}
    first_external: dict[str, int] = {}
    for i, member in enumerate(members):
        external = member.contact.wecom_external_userid
        if external and first_external.setdefault(external, i) != i:
            field = "contact.wecom_external_userid"
            found.append(
                FieldViolation(
                    f"{path}[{i}].{field}",
                    f"repeats {path}[{first_external[external]}].{field}: a WeCom contact is one member's",
                )
            )
        try:
            validate(member, now, f"{path}[{i}]")
        except InvalidArgument as error:
            found.extend(error.violations)
        first = first_index.setdefault(member.member_id, i)
        if first != i:
            found.append(
                FieldViolation(
                    f"{path}[{i}].member_id",
                    f"repeats {path}[{first}].member_id: a batch holds a member once",
                )
            )
    if found:
        raise bounded(found, path)


def bounded(found: list[FieldViolation], path: str) -> InvalidArgument:
    """The first violations within MAX_REPORTED_CHARS, and a note on `path` of how many were left out."""
    shown: list[FieldViolation] = []
    size = 0
    for violation in found:
        size += len(violation.field) + len(violation.description)
        if shown and size > MAX_REPORTED_CHARS:
            break
        shown.append(violation)
    if len(shown) < len(found):
        shown.append(FieldViolation(path, f"{len(found) - len(shown)} more violations not listed"))
    return InvalidArgument(shown)


def _validate_contact(contact: Contact, violations: Violations, path: str) -> None:
    if contact.phone and not PHONE.match(contact.phone):
        violations.add(f"{path}.phone", "must be an E.164 number such as +8613800000000")
    if contact.email and (len(contact.email) > MAX_EMAIL or not EMAIL.match(contact.email)):
        violations.add(f"{path}.email", "must be an e-mail address")
    channels = set(Channel.__members__.values())
    if contact.preferred_channel not in channels:
        violations.add(f"{path}.preferred_channel", f"unknown value {contact.preferred_channel}")
    for i, channel in enumerate(contact.opted_out_channels):
        if channel not in channels or channel == Channel.UNSPECIFIED:
            violations.add(f"{path}.opted_out_channels[{i}]", f"unknown value {channel}")
    if contact.time_zone and zones.find(contact.time_zone) is None:
        violations.add(f"{path}.time_zone", "must be an IANA time zone such as Asia/Shanghai")
    if contact.wecom_external_userid and not WECOM_EXTERNAL_USERID.match(contact.wecom_external_userid):
        violations.add(f"{path}.wecom_external_userid", "must be 1-64 characters from A-Z a-z 0-9 _ -")
    if contact.wecom_staff_userid and not WECOM_STAFF_USERID.match(contact.wecom_staff_userid):
        violations.add(f"{path}.wecom_staff_userid", "must be 1-64 characters from A-Z a-z 0-9 _ . @ -")


def _validate_attributes(attributes: dict[str, Any], violations: Violations, path: str) -> None:
    if len(attributes) > MAX_ATTRIBUTES:
        violations.add(path, f"at most {MAX_ATTRIBUTES} attributes")
    for key in attributes:
        if not ATTRIBUTE_KEY.match(key):
            violations.add(f"{path}.{key}"[:200], "keys are 1-64 characters from A-Z a-z 0-9 _ . -")
    if len(json.dumps(attributes, separators=(",", ":"))) > MAX_ATTRIBUTES_BYTES:
        violations.add(path, f"at most {MAX_ATTRIBUTES_BYTES} bytes as JSON")


# What UpdateMember's mask may name: a part of the member whole, or one field of its profile or
# contact (the dataclass fields, named as in the protobuf messages).
UPDATE_PARTS = ("profile", "contact", "attributes")
UPDATABLE_FIELDS = {
    "profile": frozenset(f.name for f in dataclasses.fields(Profile)),
    "contact": frozenset(f.name for f in dataclasses.fields(Contact)),
}


def check_update_paths(paths: Sequence[str]) -> None:
    violations = Violations()
    if not paths:
        violations.add("update_mask.paths", "name at least one field to change")
    for i, path in enumerate(paths):
        part, _, name = path.partition(".")
        if part not in UPDATE_PARTS or (name and name not in UPDATABLE_FIELDS.get(part, ())):
            violations.add(
                f"update_mask.paths[{i}]",
                "must be profile, contact, attributes or a field of the profile or the contact",
            )
    violations.raise_if_any()


def merged(current: Member, given: MemberInput, paths: Sequence[str]) -> MemberInput:
    """`current` with the fields `paths` name taken from `given`."""
    profile, contact, attributes = current.profile, current.contact, current.attributes
    for path in paths:
        part, _, name = path.partition(".")
        if part == "profile":
            profile = (
                dataclasses.replace(profile, **{name: getattr(given.profile, name)})
                if name
                else given.profile
            )
        elif part == "contact":
            contact = (
                dataclasses.replace(contact, **{name: getattr(given.contact, name)})
                if name
                else given.contact
            )
        else:
            attributes = given.attributes
    return MemberInput(current.member_id, profile, attributes, contact)


def change_time(
    revision: int, member: MemberInput, now: dt.datetime, *, imported: bool = False
) -> dt.datetime:
    """When a member change happened: a registration at the member's `register_time` (a member
    loaded with its history registered then, so it is no news), any other change now. A member
    imported (ImportMembers) without a `register_time` is an existing customer of unknown age:
    registered at `checks.EARLIEST`, the earliest time any fact may carry, so neither its
    registration nor the first tags computed from it are news to anyone."""
    registered = member.profile.register_time
    if revision == 1 and registered is None and imported:
        return checks.EARLIEST
    return registered if revision == 1 and registered is not None and registered <= now else now


def _changed_inputs(stored: Member) -> Input | None:
    """A new member's every real-time value is new; a changed one's profile values may be."""
    return Input.PROFILE if stored.revision > 1 else None


class Members:
    """Stores and reads members for one tenant at a time."""

    def __init__(self, db: Database, realtime: RealTimeTags, backfill: BackfillRefresh) -> None:
        self._db = db
        self._realtime = realtime
        self._backfill = backfill

    async def upsert(self, tenant_id: str, member: MemberInput, now: dt.datetime) -> Member:
        validate(member, now)
        try:
            async with self._db.transaction(tenant_id) as conn:
                stored, changed = await self._store(conn, tenant_id, member, now)
        except member_store.WeComContactTaken:
            raise await self._wecom_taken(tenant_id, [member], "member") from None
        if changed:
            await self._realtime.refreshed(tenant_id, [stored.member_id], _changed_inputs(stored), now)
        return stored

    async def update(
        self, tenant_id: str, given: MemberInput, paths: Sequence[str], now: dt.datetime
    ) -> Member:
        """Changes the fields `paths` name (validated by `check_update_paths`) to `given`'s."""
        validate(given, now, whole=False)
        try:
            async with self._db.transaction(tenant_id) as conn:
                current = await member_store.lock_member(conn, given.member_id)
                if current is None:
                    raise NotFound(f"members/{given.member_id} not found")
                member = merged(current, given, paths)
                check_pairs(member)
                stored, changed = await self._store(conn, tenant_id, member, now)
        except member_store.WeComContactTaken:
            raise await self._wecom_taken(tenant_id, [given], "member") from None
        if changed:
            await self._realtime.refreshed(tenant_id, [stored.member_id], _changed_inputs(stored), now)
        return stored

    @staticmethod
    async def _store(
        conn: Connection, tenant_id: str, member: MemberInput, now: dt.datetime
    ) -> tuple[Member, bool]:
        """Stores the member; when that changed it, with its feed entry and queued refresh."""
        stored, changed = await member_store.upsert_member(conn, tenant_id, member)
        if changed:
            happened = change_time(stored.revision, member, now)
            await feed_store.append_feed(
                conn,
                tenant_id,
                FeedKind.MEMBER_CHANGED,
                stored.member_id,
                "",
                {"revision": stored.revision, "occur_time": happened.isoformat()},
            )
            await refresh_store.queue_refresh(
                conn, tenant_id, [stored.member_id], input_bits(_changed_inputs(stored)), happened
            )
        return stored, changed

    async def import_batch(
        self, tenant_id: str, members: Sequence[MemberInput], now: dt.datetime, path: str = "members"
    ) -> int:
        """Stores one batch in one transaction with upsert's rules; returns how many members changed.

        Set-based (COPY and one statement) so large loads are fast; otherwise the same as upserting
        each member (unchanged ones are left alone, changed ones get a feed entry and their
        real-time tags refreshed once it commits), except that an import loads the shop's existing
        members: their feed entries and the tag changes of their refresh are marked backfilled, so
        consumers update what they hold (audiences) and nothing treats them as news (no journey
        enrols, no profile task rewards; decision 122). `path` names the batch in errors.
        """
        validate_batch(members, now, path)
        try:
            changed = await self._import(tenant_id, members, now)
        except member_store.WeComContactTaken:
            raise await self._wecom_taken(tenant_id, members, path) from None
        if changed:
            created = [member_id for member_id, revision in changed if revision == 1]
            updated = [member_id for member_id, revision in changed if revision > 1]
            await member_store.analyze_members_if_grown(self._db.pool, len(created))
            owed = {member_id: input_bits(None) for member_id in created}
            owed.update((member_id, input_bits(Input.PROFILE)) for member_id in updated)
            await self._backfill.refresh(tenant_id, owed, now, lanes=1)
        return len(changed)

    async def _import(
        self, tenant_id: str, members: Sequence[MemberInput], now: dt.datetime
    ) -> list[tuple[str, int]]:
        """import_batch's transaction: the members, their feed entries and owed refreshes."""
        async with self._db.transaction(tenant_id) as conn:
            changed = await member_store.import_members(conn, tenant_id, members)
            if changed:
                given = {m.member_id: m for m in members}
                happened = {m: change_time(revision, given[m], now, imported=True) for m, revision in changed}
                await feed_store.append_feed_many(
                    conn,
                    tenant_id,
                    FeedKind.MEMBER_CHANGED,
                    [
                        (
                            m,
                            "",
                            {"revision": revision, "occur_time": happened[m].isoformat(), "backfilled": True},
                        )
                        for m, revision in changed
                    ],
                )
                # As upsert: a new member's real-time values are all new; a changed one's profile ones may be.
                created = [member_id for member_id, revision in changed if revision == 1]
                updated = [member_id for member_id, revision in changed if revision > 1]
                await refresh_store.queue_refresh(conn, tenant_id, created, input_bits(None), happened)
                await refresh_store.queue_refresh(
                    conn, tenant_id, updated, input_bits(Input.PROFILE), happened
                )
        return changed

    async def _wecom_taken(
        self, tenant_id: str, members: Sequence[MemberInput], path: str
    ) -> AlreadyExists | Aborted:
        """The answer to a write refused because another member is a WeCom contact it gives: which
        member of the write (`path` names the write, a batch's `[i]` added) and whose it is."""
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            clash = await member_store.wecom_clash(conn, members)
        if clash is None:  # the holder let go of it since: a retry may pass
            return Aborted("another member held a WeCom external_userid given; retry")
        index, holder = clash
        row = f"{path}[{index}]" if path != "member" else path
        return AlreadyExists(f"{row}.contact.wecom_external_userid: members/{holder} is this WeCom contact")

    async def get_many(self, tenant_id: str, member_ids: Sequence[str], allow_missing: bool) -> list[Member]:
        """The members in the order asked; NotFound names the first unknown one unless `allow_missing`
        (then unknown ones are left out)."""
        violations = Violations()
        if not 1 <= len(member_ids) <= MAX_BATCH_GET:
            violations.add("names", f"must name 1-{MAX_BATCH_GET} members")
        seen: set[str] = set()
        for i, member_id in enumerate(member_ids[:MAX_BATCH_GET]):
            checks.natural_id(member_id, violations, f"names[{i}]")
            if member_id in seen:
                violations.add(f"names[{i}]", "names a member given before")
            seen.add(member_id)
        violations.raise_if_any()
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            found = {member.member_id: member for member in await member_store.get_members(conn, member_ids)}
        if not allow_missing:
            missing = next((m for m in member_ids if m not in found), None)
            if missing is not None:
                raise NotFound(f"members/{missing} not found")
        return [found[m] for m in member_ids if m in found]

    async def get(self, tenant_id: str, member_id: str) -> Member:
        violations = Violations()
        checks.natural_id(member_id, violations, "name")
        violations.raise_if_any()
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            found = await member_store.get_member(conn, member_id)
        if found is None:
            raise NotFound(f"members/{member_id} not found")
        return found
