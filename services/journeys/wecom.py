"""The tenant's WeCom connector and sync, as the journeys service's RPCs see them: a connector is
checked whole (each bad field named `connector.<field>`; its dimensions asked of tagging: pushed
ones defined, pulled ones MANUAL), stored at a version, and its sync (`wecom-sync/{tenant}`) started
or woken with signal-with-start. A full reconciliation is started in the sync's row first (so
GetWeComSync answers `running` at once), then the workflow is woken to run it.

Secrets (the customer-contact secret, the EncodingAESKey) are input only: an empty one on a later
put keeps the stored one, they are never answered and never logged."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from runtime.db import Database
from runtime.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound, Violations
from runtime.temporal_client import LazyClient, answered
from services.journeys.references import DimensionInfo
from workflows.wecom import client as sync_client
from workflows.wecom import connector_store, sync_store
from workflows.wecom.connector_store import Connector
from workflows.wecom.sync_store import SyncState

FIELD = "connector"
CORP_ID = re.compile(r"[A-Za-z0-9]{1,64}")
TOKEN = re.compile(r"[A-Za-z0-9]{1,32}")
AES_KEY = re.compile(r"[A-Za-z0-9]{43}")
DIMENSION = re.compile(r"[a-z][a-z0-9_]{0,62}")
MAX_SECRET = 128
MAX_DIMENSIONS = 20
MAX_REQUEST_ID = 64

# The dimension lookup (services/journeys/peers.py `Peers.dimension`).
Dimensions = Callable[[str, str], Awaitable[DimensionInfo | None]]


@dataclass(frozen=True)
class ConnectorInput:
    """What a put asks for (secrets empty: keep the stored ones)."""

    corp_id: str
    secret: str
    callback_token: str
    encoding_aes_key: str
    push_dimensions: tuple[str, ...]
    pull_dimensions: tuple[str, ...]
    enabled: bool


def callback_path(tenant_id: str) -> str:
    return f"/wecom/callback/{tenant_id}"


def _check_shape(given: ConnectorInput) -> Violations:
    found = Violations()
    if not CORP_ID.fullmatch(given.corp_id):
        found.add(f"{FIELD}.corp_id", "is required: 1-64 characters from [A-Za-z0-9]")
    if len(given.secret) > MAX_SECRET or any(not c.isprintable() for c in given.secret):
        found.add(f"{FIELD}.secret", f"must be at most {MAX_SECRET} printable characters")
    if not TOKEN.fullmatch(given.callback_token):
        found.add(f"{FIELD}.callback_token", "is required: 1-32 characters from [A-Za-z0-9]")
    if given.encoding_aes_key and not AES_KEY.fullmatch(given.encoding_aes_key):
        found.add(f"{FIELD}.encoding_aes_key", "must be exactly 43 characters from [A-Za-z0-9]")
    for name, dimensions in (
        ("push_dimensions", given.push_dimensions),
        ("pull_dimensions", given.pull_dimensions),
    ):
        if len(dimensions) > MAX_DIMENSIONS:
            found.add(f"{FIELD}.{name}", f"must name at most {MAX_DIMENSIONS} dimensions")
            continue
        for i, dimension in enumerate(dimensions):
            if not DIMENSION.fullmatch(dimension):
                found.add(
                    f"{FIELD}.{name}[{i}]", "must be a dimension name (lower-case letter, then [a-z0-9_])"
                )
            elif dimension in dimensions[:i]:
                found.add(f"{FIELD}.{name}[{i}]", f"repeats {dimension!r}")
    return found


async def _check_dimensions(
    dimensions: Dimensions, tenant_id: str, given: ConnectorInput, found: Violations
) -> None:
    """Pushed dimensions must be defined and not retired; pulled ones MANUAL too (staff set them)."""
    infos: dict[str, DimensionInfo | None] = {}
    for name in dict.fromkeys((*given.push_dimensions, *given.pull_dimensions)):
        infos[name] = await dimensions(tenant_id, name)
    for i, name in enumerate(given.push_dimensions):
        info = infos[name]
        if info is None:
            found.add(f"{FIELD}.push_dimensions[{i}]", f"no dimension {name!r} is defined")
        elif not info.active:
            found.add(f"{FIELD}.push_dimensions[{i}]", f"dimension {name!r} is retired")
    for i, name in enumerate(given.pull_dimensions):
        info = infos[name]
        if info is None:
            found.add(f"{FIELD}.pull_dimensions[{i}]", f"no dimension {name!r} is defined")
        elif info.kind != "manual":
            found.add(f"{FIELD}.pull_dimensions[{i}]", f"dimension {name!r} is {info.kind}, not MANUAL")
        elif not info.active:
            found.add(f"{FIELD}.pull_dimensions[{i}]", f"dimension {name!r} is retired")


def _merged(given: ConnectorInput, stored: Connector | None, found: Violations) -> ConnectorInput:
    """The input with the stored secrets where it leaves them empty (required on a first put)."""
    secret = given.secret or (stored.secret if stored else "")
    aes_key = given.encoding_aes_key or (stored.encoding_aes_key if stored else "")
    if not secret:
        found.add(f"{FIELD}.secret", "is required on the first put")
    if not aes_key:
        found.add(f"{FIELD}.encoding_aes_key", "is required on the first put")
    return ConnectorInput(
        given.corp_id,
        secret,
        given.callback_token,
        aes_key,
        given.push_dimensions,
        given.pull_dimensions,
        given.enabled,
    )


def _same(wanted: ConnectorInput, stored: Connector) -> bool:
    return (
        wanted.corp_id,
        wanted.secret,
        wanted.callback_token,
        wanted.encoding_aes_key,
        wanted.push_dimensions,
        wanted.pull_dimensions,
        wanted.enabled,
    ) == (
        stored.corp_id,
        stored.secret,
        stored.callback_token,
        stored.encoding_aes_key,
        stored.push_dimensions,
        stored.pull_dimensions,
        stored.enabled,
    )


def _needs_resync(wanted: ConnectorInput, stored: Connector | None) -> bool:
    """What the feed's changes alone would not bring to WeCom: members' tags of a dimension newly
    pushed, or of every pushed one once the connector is (again) on, or after the corp changed."""
    if not wanted.enabled or not wanted.push_dimensions:
        return False
    if stored is None or not stored.enabled or stored.corp_id != wanted.corp_id:
        return True
    return bool(set(wanted.push_dimensions) - set(stored.push_dimensions))


class WeComConnectors:
    def __init__(
        self,
        db: Database,
        dimensions: Dimensions,
        temporal: LazyClient,
        task_queue: str,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._db = db
        self._dimensions = dimensions
        self._temporal = temporal
        self._task_queue = task_queue
        self._clock = clock

    async def put(self, tenant_id: str, given: ConnectorInput, expected_version: int) -> Connector:
        """Stores the connector (same content: unchanged) and starts or wakes the sync."""
        found = _check_shape(given)
        if expected_version < 0:
            found.add("expected_version", "must not be negative")
        if not found:
            await _check_dimensions(self._dimensions, tenant_id, given, found)
        found.raise_if_any()
        now = self._clock()
        async with self._db.transaction(tenant_id) as conn:
            # One put of the tenant at a time: versions follow one another, even for the first.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('wecom-connector/' || $1))", tenant_id)
            stored = await connector_store.get(conn, for_update=True)
            if expected_version and (stored is None or stored.version != expected_version):
                at = stored.version if stored else 0
                raise Aborted(f"the connector is at version {at}, not {expected_version}")
            wanted = _merged(given, stored, found)
            found.raise_if_any()
            if stored is not None and _same(wanted, stored):
                result = stored
            else:
                result = await connector_store.put(
                    conn,
                    tenant_id,
                    corp_id=wanted.corp_id,
                    secret=wanted.secret,
                    callback_token=wanted.callback_token,
                    encoding_aes_key=wanted.encoding_aes_key,
                    push_dimensions=wanted.push_dimensions,
                    pull_dimensions=wanted.pull_dimensions,
                    enabled=wanted.enabled,
                    version=(stored.version + 1) if stored else 1,
                    now=now,
                )
                if _needs_resync(wanted, stored):
                    await sync_store.start_resync(conn, f"connector-v{result.version}", now)
        await self._wake(tenant_id, sync_client.WAKE)
        return result

    async def get(self, tenant_id: str) -> Connector:
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            stored = await connector_store.get(conn)
        if stored is None:
            raise NotFound("the tenant has no WeCom connector")
        return stored

    async def resync(self, tenant_id: str, request_id: str) -> SyncState:
        """Starts the full reconciliation of `request_id` (a retry of the latest one: answers it)."""
        if not request_id or len(request_id) > MAX_REQUEST_ID:
            raise InvalidArgument.field("request_id", f"is required: 1-{MAX_REQUEST_ID} characters")
        async with self._db.transaction(tenant_id) as conn:
            stored = await connector_store.get(conn)
            if stored is None or not stored.enabled:
                raise FailedPrecondition("the tenant has no enabled WeCom connector")
            state = await sync_store.start_resync(conn, request_id, self._clock())
        await self._wake(tenant_id, sync_client.RESYNC, request_id)
        return state

    async def sync(self, tenant_id: str) -> SyncState:
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            stored = await connector_store.get(conn)
            state = await sync_store.get(conn)
        if stored is None:
            raise NotFound("the tenant has no WeCom connector")
        return state or SyncState()

    async def _wake(self, tenant_id: str, signal: str, *args: str) -> None:
        client = await self._temporal.get()
        await answered(sync_client.signal(client, self._task_queue, tenant_id, signal, *args))
