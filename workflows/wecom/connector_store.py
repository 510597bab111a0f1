"""The tenant's WeCom connector row (journeys migration 0010), SQL only: read by the journeys
service's RPCs, the sync's rounds, the callback endpoint (token, key, corp id) and the WeCom channel
(credentials). Functions take a connection inside the caller's tenant transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from runtime.db import Connection


@dataclass(frozen=True)
class Connector:
    corp_id: str
    # Secrets: never returned by an RPC, never logged (repr hides them).
    secret: str = field(repr=False)
    callback_token: str = field(repr=False)
    encoding_aes_key: str = field(repr=False)
    push_dimensions: tuple[str, ...] = ()
    pull_dimensions: tuple[str, ...] = ()
    enabled: bool = False
    version: int = 0
    update_time: dt.datetime | None = None


_COLUMNS = """corp_id, secret, callback_token, encoding_aes_key, push_dimensions, pull_dimensions,
              enabled, version, update_time"""


def _connector(row: asyncpg.Record) -> Connector:
    get = row.__getitem__
    return Connector(
        corp_id=get("corp_id"),
        secret=get("secret"),
        callback_token=get("callback_token"),
        encoding_aes_key=get("encoding_aes_key"),
        push_dimensions=tuple(get("push_dimensions")),
        pull_dimensions=tuple(get("pull_dimensions")),
        enabled=get("enabled"),
        version=get("version"),
        update_time=get("update_time"),
    )


async def get(conn: Connection, *, for_update: bool = False) -> Connector | None:
    """The tenant's connector (the transaction's tenant), or None."""
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM journeys.wecom_connectors{lock}")
    return None if row is None else _connector(row)


async def put(
    conn: Connection,
    tenant_id: str,
    *,
    corp_id: str,
    secret: str,
    callback_token: str,
    encoding_aes_key: str,
    push_dimensions: Sequence[str],
    pull_dimensions: Sequence[str],
    enabled: bool,
    version: int,
    now: dt.datetime,
) -> Connector:
    """Stores the connector at `version` (the caller decided it: 1 on the first put, +1 on a
    change), and the sync's row if the tenant has none yet."""
    row = await conn.fetchrow(
        f"""INSERT INTO journeys.wecom_connectors (tenant_id, {_COLUMNS})
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
            ON CONFLICT (tenant_id) DO UPDATE SET
                corp_id = EXCLUDED.corp_id, secret = EXCLUDED.secret,
                callback_token = EXCLUDED.callback_token, encoding_aes_key = EXCLUDED.encoding_aes_key,
                push_dimensions = EXCLUDED.push_dimensions, pull_dimensions = EXCLUDED.pull_dimensions,
                enabled = EXCLUDED.enabled, version = EXCLUDED.version, update_time = EXCLUDED.update_time
            RETURNING {_COLUMNS}""",
        tenant_id,
        corp_id,
        secret,
        callback_token,
        encoding_aes_key,
        list(push_dimensions),
        list(pull_dimensions),
        enabled,
        version,
        now,
    )
    await conn.execute(
        "INSERT INTO journeys.wecom_sync (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING", tenant_id
    )
    assert row is not None
    return _connector(row)
