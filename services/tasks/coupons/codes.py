"""Coupon codes: unguessable and easy to read out.

16 characters of a 32-letter alphabet (0-9 and A-Z without the look-alikes I, L, O and U) from the
operating system's random source: 80 random bits. Uniqueness within a tenant is the coupons
table's key; the insert that meets a taken code draws another (coupon_store.insert_coupon).
"""

from __future__ import annotations

import re
import secrets

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
LENGTH = 16
CODE = re.compile(f"^[{ALPHABET}]{{{LENGTH}}}\\Z")


def new_code() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))


def code_from_name(name: str) -> str | None:
    """The code of `coupons/{code}`, or None when the name cannot name a coupon."""
    code = name.removeprefix("coupons/")
    return code if name.startswith("coupons/") and CODE.match(code) else None
