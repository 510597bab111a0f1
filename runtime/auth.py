"""Bearer-token authentication: a token names exactly one tenant.

The tenant of the current call lives in a contextvar set by the gRPC interceptor, so domain code
asks `current_tenant()` instead of threading it through every signature by hand.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from contextvars import ContextVar, Token

from runtime.errors import Unauthenticated

_tenant: ContextVar[str | None] = ContextVar("memberops_tenant", default=None)


class TokenAuthenticator:
    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._tokens = dict(tokens)

    def tenant_for(self, authorization: str | None) -> str:
        """Returns the tenant of an `authorization` header value, or raises Unauthenticated."""
        if not authorization:
            raise Unauthenticated("missing authorization metadata: send 'authorization: Bearer <token>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization must be 'Bearer <token>'")
        token = token.strip()
        # Compare against every token so the time taken says nothing about which prefix matched.
        tenant: str | None = None
        for known, known_tenant in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                tenant = known_tenant
        if tenant is None:
            raise Unauthenticated("unknown bearer token")
        return tenant


def current_tenant() -> str:
    tenant = _tenant.get()
    if tenant is None:
        raise RuntimeError("no tenant bound: the call did not pass through the auth interceptor")
    return tenant


def bind_tenant(tenant_id: str) -> Token[str | None]:
    """Binds the tenant for the rest of the current task; returns a token for `unbind_tenant`."""
    return _tenant.set(tenant_id)


def unbind_tenant(token: Token[str | None]) -> None:
    _tenant.reset(token)
