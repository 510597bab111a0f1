"""Inputs and results of the member lookup, shared by the workflow and its activity."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MemberLookupInput:
    tenant_id: str
    member_id: str


@dataclass(frozen=True)
class MemberSummary:
    member_id: str
    found: bool
    city: str = ""
    city_tier: str = ""
    register_channel: str = ""
    revision: int = 0
    # The member as a WeCom external contact and the staff userid owning the relationship ('' when
    # none); left out of the repr, which logs and the demo print.
    wecom_external_userid: str = field(default="", repr=False)
    wecom_staff_userid: str = field(default="", repr=False)
