"""The tagging service's domain types: what a member is, independent of wire and storage."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any


class Gender(enum.IntEnum):
    UNSPECIFIED = 0
    FEMALE = 1
    MALE = 2
    OTHER = 3


class CityTier(enum.IntEnum):
    UNSPECIFIED = 0
    TIER_1 = 1
    NEW_TIER_1 = 2
    TIER_2 = 3
    TIER_3 = 4
    TIER_4 = 5
    TIER_5 = 6


@dataclass(frozen=True)
class Profile:
    gender: int = Gender.UNSPECIFIED
    birthday: dt.date | None = None
    city: str = ""
    city_tier: int = CityTier.UNSPECIFIED
    register_time: dt.datetime | None = None
    register_channel: str = ""


@dataclass(frozen=True)
class MemberInput:
    """What a caller sends to create or replace a member."""

    member_id: str
    profile: Profile = field(default_factory=Profile)
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Member:
    member_id: str
    profile: Profile
    attributes: dict[str, Any]
    revision: int
    create_time: dt.datetime
    update_time: dt.datetime
