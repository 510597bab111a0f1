"""How a service reads a peer's answer over gRPC, the same in every service that calls another:
what counts as "names nothing", what as "no answer" (retry later), and what as our own fault."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import grpc

from runtime.errors import Unavailable

_T = TypeVar("_T")

# A peer answered that what was asked names nothing: NOT_FOUND, or INVALID_ARGUMENT for an id by
# a rule this service checks its callers' ids by too (runtime.checks), so one no caller
# of ours can send, and one that can never exist.
ABSENT = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT})
# The peer did not answer in time: down, restarting or overloaded. Retrying later may succeed.
NO_ANSWER = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class PeerFailed(Exception):
    """A peer answered with an error our caller's request cannot explain (INTERNAL, refused our
    credentials, …): our fault, so INTERNAL, not UNAVAILABLE, which tells callers to retry."""


def failure(peer: str, error: grpc.aio.AioRpcError) -> Exception:
    """What a failed call to a peer is, as the domain sees it."""
    code = error.code()
    if code in NO_ANSWER:
        return Unavailable(f"{peer} did not answer: {code.name}")
    return PeerFailed(f"{peer} answered {code.name}: {error.details()}")


async def answer(peer: str, call: Awaitable[_T]) -> _T | None:
    """The reply; None when the peer answered that what was asked names nothing (ABSENT)."""
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        if error.code() in ABSENT:
            return None
        raise failure(peer, error) from error


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata presenting `token` (a tenant's, `Settings.token_for_tenant`)."""
    return (("authorization", f"Bearer {token}"),)
