"""Deterministic buckets of members, shared by audience snapshots' arms and journeys' holdouts.

A member's bucket is the first 8 hex digits of md5(`salt:member_id`) modulo 10000: stable, spread
evenly, computable in SQL (the audience service does) and in Python alike.
"""

from __future__ import annotations

import hashlib

BUCKETS = 10_000


def bucket(salt: str, member_id: str) -> int:
    """The member's bucket, 0-9999."""
    return int(hashlib.md5(f"{salt}:{member_id}".encode()).hexdigest()[:8], 16) % BUCKETS


def bucket_sql(salt: str, member_id: str) -> str:
    """The same bucket as an SQL expression over two SQL expressions (a text salt, a member id)."""
    return f"(('x' || substr(md5({salt} || ':' || {member_id}), 1, 8))::bit(32)::bigint % {BUCKETS})"
