"""Journey definitions as operators manage them: validated (shape and references), stored as
immutable versions, read with their state, listed. No gRPC here (see api.py) and no SQL (the
stores).

A write with a `request_id` answers a retry with its first answer: the id is looked up before
anything else (so a retry succeeds even if a reference broke since), then recorded in the same
transaction as the version it stored, under a lock on the id and its primary key, so concurrent
duplicates store one version. The same id with other content is ALREADY_EXISTS.

Create and update refuse broken references too (INVALID_ARGUMENT naming each field): a journey
that names an audience or tag value that does not exist cannot run as written, and the operator is
the one who can fix it, now. A reference that breaks later (an audience deleted) is caught again
when a version is activated (FAILED_PRECONDITION, see api.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from runtime import page_tokens
from runtime.db import Connection, Database
from runtime.errors import (
    Aborted,
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from services.journeys import journey_store, references, request_store
from services.journeys.journey_store import JourneyRow
from services.journeys.references import Catalog, Rendered
from services.journeys.request_store import RequestRow
from workflows.journeys import store
from workflows.journeys.definition import KEY, JourneyDefinition

MAX_REQUEST_ID = 128
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
STATES = ("draft", "active", "paused", "archived")
# Where the definition sits in the requests that carry one.
FIELD = "journey"


@dataclass(frozen=True)
class Validation:
    """A dry run's findings: shape errors (the definition is malformed) and reference errors."""

    shape: list[FieldViolation]
    references: list[FieldViolation]
    rendered: list[Rendered]


def key_from_name(name: str, path: str = "name") -> str:
    key = name.removeprefix("journeys/")
    if not name.startswith("journeys/") or not KEY.match(key):
        raise InvalidArgument.field(path, "must be a resource name of the form journeys/{key}")
    return key


def _check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID:
        raise InvalidArgument.field("request_id", f"must be at most {MAX_REQUEST_ID} characters")


def _request_hash(method: str, definition: JourneyDefinition, *extra: object) -> str:
    _, content_hash = store.content_of(definition)
    return hashlib.sha256("\x1f".join((method, content_hash, *map(str, extra))).encode()).hexdigest()


class Journeys:
    def __init__(self, db: Database, catalog: Catalog) -> None:
        self._db = db
        self._catalog = catalog

    async def validate(
        self, tenant_id: str, definition: JourneyDefinition, sample_member: str = ""
    ) -> Validation:
        """References and rendering of a shape-valid definition (api.py collects the shape errors)."""
        broken = await references.check(self._catalog, tenant_id, definition, FIELD)
        sample = references.SampleMember(references.SAMPLE_PROFILE)
        if sample_member:
            found = await self._catalog.member(tenant_id, sample_member)
            if found is None:
                raise NotFound(f"members/{sample_member} does not exist")
            sample = found
        rendered, unrenderable = references.render(definition, sample, FIELD)
        return Validation([], broken + unrenderable, rendered)

    async def check_writable(self, tenant_id: str, definition: JourneyDefinition) -> None:
        """InvalidArgument naming every broken reference of the definition, and every template that
        parses but cannot be formatted (`{nickname:d}`), which would fail only at send time."""
        broken = await references.check(self._catalog, tenant_id, definition, FIELD)
        sample = references.SampleMember(references.SAMPLE_PROFILE)
        broken += references.render(definition, sample, FIELD)[1]
        if broken:
            raise InvalidArgument(broken)

    async def broken_references(self, tenant_id: str, definition: JourneyDefinition) -> list[FieldViolation]:
        return await references.check(self._catalog, tenant_id, definition, FIELD)

    async def create(self, tenant_id: str, definition: JourneyDefinition, request_id: str) -> JourneyRow:
        """Stores version 1 of a new journey; ALREADY_EXISTS when the key has a version."""
        _check_request_id(request_id)
        request_hash = _request_hash("create", definition)

        async def write(conn: Connection) -> int:
            await store.lock_journey(conn, tenant_id, definition.key)
            if await store.latest_version(conn, tenant_id, definition.key) is not None:
                raise AlreadyExists(f"journeys/{definition.key} exists: UpdateJourney stores a new version")
            return (await store.add_version(conn, tenant_id, definition, None)).version

        return await self._write(tenant_id, definition, request_id, "create", request_hash, write)

    async def update(
        self, tenant_id: str, definition: JourneyDefinition, expected_version: int, request_id: str
    ) -> JourneyRow:
        """Stores the next version (none when the content equals the latest's)."""
        _check_request_id(request_id)
        if expected_version < 0:
            raise InvalidArgument.field("expected_version", "must be 0 (any) or a version number")
        request_hash = _request_hash("update", definition, expected_version)

        async def write(conn: Connection) -> int:
            await store.lock_journey(conn, tenant_id, definition.key)
            latest = await store.latest_version(conn, tenant_id, definition.key)
            if latest is None:
                raise NotFound(f"journeys/{definition.key} does not exist: CreateJourney stores it")
            # The latest content again is a retry of the update that made it: nothing changes.
            changed = latest.content_hash != store.content_of(definition)[1]
            if changed and expected_version and expected_version != latest.version:
                raise Aborted(
                    f"journeys/{definition.key} is at version {latest.version}, not {expected_version}"
                )
            return (await store.add_version(conn, tenant_id, definition, latest)).version

        return await self._write(tenant_id, definition, request_id, "update", request_hash, write)

    async def _write(
        self,
        tenant_id: str,
        definition: JourneyDefinition,
        request_id: str,
        method: str,
        request_hash: str,
        write: Callable[[Connection], Awaitable[int]],
    ) -> JourneyRow:
        if request_id:
            async with self._db.transaction(tenant_id, readonly=True) as conn:
                first = await request_store.find(conn, tenant_id, request_id)
            if first is not None:
                return await self._repeat(tenant_id, request_id, first, method, request_hash)
        await self.check_writable(tenant_id, definition)
        async with self._db.transaction(tenant_id) as conn:
            if request_id:
                await request_store.lock(conn, tenant_id, request_id)
                first = await request_store.find(conn, tenant_id, request_id)
                if first is not None:
                    version = self._same(request_id, first, method, request_hash)
                else:
                    version = await write(conn)
                    answer = RequestRow(method, request_hash, definition.key, version)
                    await request_store.record(conn, tenant_id, request_id, answer)
            else:
                version = await write(conn)
            return await self._row(conn, tenant_id, definition.key, version)

    async def _repeat(
        self, tenant_id: str, request_id: str, first: RequestRow, method: str, request_hash: str
    ) -> JourneyRow:
        version = self._same(request_id, first, method, request_hash)
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            return await self._row(conn, tenant_id, first.journey_key, version)

    @staticmethod
    def _same(request_id: str, first: RequestRow, method: str, request_hash: str) -> int:
        if first.method != method or first.request_hash != request_hash:
            raise AlreadyExists(f"request_id {request_id!r} was used for a different request")
        return first.version

    @staticmethod
    async def _row(conn: Connection, tenant_id: str, key: str, version: int) -> JourneyRow:
        row = await journey_store.get_journey(conn, tenant_id, key, version)
        if row is None:
            raise NotFound(f"journeys/{key}" + (f" version {version}" if version else "") + " does not exist")
        return row

    async def get(self, tenant_id: str, key: str, version: int = 0) -> JourneyRow:
        if version < 0:
            raise InvalidArgument.field("version", "must be 0 (the latest) or a version number")
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            return await self._row(conn, tenant_id, key, version)

    async def list_page(
        self, tenant_id: str, state: str, page_size: int, page_token: str
    ) -> tuple[list[JourneyRow], str]:
        """A page of the latest versions by key, in `state` ('' for any)."""
        size = page_tokens.page_size(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        scope = f"journeys:{state}"
        after = page_tokens.decode_matching(page_token, scope, KEY)
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            rows = await journey_store.list_journeys(conn, tenant_id, state, after, size + 1)
        token = page_tokens.encode(scope, rows[size - 1].key) if len(rows) > size else ""
        return rows[:size], token
