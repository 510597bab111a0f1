"""Inputs and results of the member lookup, shared by the workflow and its activity."""

from __future__ import annotations

from dataclasses import dataclass


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
