"""Domain errors: what went wrong in words the caller can act on, free of any transport.

The gRPC layer maps each class to one status code (see `runtime.status`), so domain code
never imports grpc and every service answers the same way for the same kind of mistake.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class DomainError(Exception):
    """Base of every error a caller caused and may be told about."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field: `field` is a dotted path in the request, e.g. `member.profile.birthday`."""

    field: str
    description: str


class InvalidArgument(DomainError):
    """The request is malformed; nothing was written."""

    def __init__(self, violations: Iterable[FieldViolation]) -> None:
        self.violations = tuple(violations)
        if not self.violations:
            raise ValueError("InvalidArgument needs at least one field violation")
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in self.violations))

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])


class NotFound(DomainError):
    """The named resource does not exist for this tenant."""


class AlreadyExists(DomainError):
    """The resource exists, or a request id was reused with different content."""


class FailedPrecondition(DomainError):
    """The request is well formed but the system is not in a state to accept it."""


class ResourceExhausted(DomainError):
    """What the request needs has run out (e.g. a reward's stock); retrying later may succeed."""


class Aborted(DomainError):
    """A concurrent change won: the caller's expected version is no longer current."""


class Unavailable(DomainError):
    """A service this one depends on did not answer; retrying later may succeed."""


class Unauthenticated(DomainError):
    """The caller did not prove who it is."""


class Violations:
    """Collects every violation of a request before failing, so the caller fixes them in one go."""

    def __init__(self) -> None:
        self._items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self._items.append(FieldViolation(field, description))

    def __bool__(self) -> bool:
        return bool(self._items)

    def raise_if_any(self) -> None:
        if self._items:
            raise InvalidArgument(self._items)
