"""Members: validation and the rules of storing them. Plain Python, no gRPC and no SQL."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from services.common.db import Database
from services.common.errors import NotFound, Violations
from services.tagging import store
from services.tagging.model import CityTier, Gender, Member, MemberInput

MEMBER_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,64}$")
ATTRIBUTE_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTES_BYTES = 8 * 1024
MAX_TEXT = 64
EARLIEST_BIRTHDAY = dt.date(1900, 1, 1)
# Clocks differ between the caller and us; a registration a few minutes ahead is not an error.
CLOCK_SKEW = dt.timedelta(minutes=5)


def validate_member_id(member_id: str, violations: Violations, path: str) -> None:
    if not MEMBER_ID.match(member_id):
        violations.add(path, "must be 1-64 characters from A-Z a-z 0-9 _ . : @ -")


def validate(member: MemberInput, now: dt.datetime, path: str = "member") -> None:
    """Raises InvalidArgument naming every bad field of `member`."""
    violations = Violations()
    validate_member_id(member.member_id, violations, f"{path}.member_id")
    profile, p = member.profile, f"{path}.profile"
    if profile.gender not in Gender.__members__.values():
        violations.add(f"{p}.gender", f"unknown value {profile.gender}")
    if profile.city_tier not in CityTier.__members__.values():
        violations.add(f"{p}.city_tier", f"unknown value {profile.city_tier}")
    if profile.birthday is not None and not EARLIEST_BIRTHDAY <= profile.birthday <= now.date():
        violations.add(f"{p}.birthday", f"must lie between {EARLIEST_BIRTHDAY} and today")
    if profile.register_time is not None and profile.register_time > now + CLOCK_SKEW:
        violations.add(f"{p}.register_time", "must not be in the future")
    for name in ("city", "register_channel"):
        if len(getattr(profile, name)) > MAX_TEXT:
            violations.add(f"{p}.{name}", f"must be at most {MAX_TEXT} characters")
    _validate_attributes(member.attributes, violations, f"{path}.attributes")
    violations.raise_if_any()


def _validate_attributes(attributes: dict[str, Any], violations: Violations, path: str) -> None:
    if len(attributes) > MAX_ATTRIBUTES:
        violations.add(path, f"at most {MAX_ATTRIBUTES} attributes")
    for key in attributes:
        if not ATTRIBUTE_KEY.match(key):
            violations.add(f"{path}.{key}"[:200], "keys are 1-64 characters from A-Z a-z 0-9 _ . -")
    if len(json.dumps(attributes, separators=(",", ":"))) > MAX_ATTRIBUTES_BYTES:
        violations.add(path, f"at most {MAX_ATTRIBUTES_BYTES} bytes as JSON")


class Members:
    """Stores and reads members for one tenant at a time."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def upsert(self, tenant_id: str, member: MemberInput, now: dt.datetime) -> Member:
        validate(member, now)
        async with self._db.transaction(tenant_id) as conn:
            return await store.upsert_member(conn, tenant_id, member)

    async def get(self, tenant_id: str, member_id: str) -> Member:
        violations = Violations()
        validate_member_id(member_id, violations, "name")
        violations.raise_if_any()
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            found = await store.get_member(conn, member_id)
        if found is None:
            raise NotFound(f"members/{member_id} not found")
        return found
