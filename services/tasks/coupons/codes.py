"""Coupon codes: unguessable and easy to read out.

16 characters of a 32-letter alphabet (0-9 and A-Z without the look-alikes I, L, O and U) from the
operating system's random source: 80 random bits. Uniqueness within a tenant is the coupons
table's key; an issue offers several codes and the first not taken is used (tasks.issue_coupon).
"""

from __future__ import annotations

import re
import secrets

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
LENGTH = 16
CODE = re.compile(f"^[{ALPHABET}]{{{LENGTH}}}\\Z")


def new_codes(count: int) -> list[str]:
    """`count` codes from one read of the random source, five bits of its 80 per code for each
    character (32 letters: each equally likely). A read per character cost about 0.1 ms a code, and
    a read per code was a system call per offered code on every claim (five)."""
    size = LENGTH * 5 // 8
    drawn = secrets.token_bytes(size * count)
    return [_code(int.from_bytes(drawn[i : i + size])) for i in range(0, size * count, size)]


def _code(bits: int) -> str:
    return "".join(ALPHABET[(bits >> shift) & 31] for shift in range(0, LENGTH * 5, 5))


def code_from_name(name: str) -> str | None:
    """The code of `coupons/{code}`, or None when the name cannot name a coupon."""
    code = name.removeprefix("coupons/")
    return code if name.startswith("coupons/") and CODE.match(code) else None
