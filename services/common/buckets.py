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
