"""Calling any RPC with raw request bytes, and what the fuzzer checks after each call."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from runtime.db import Database
from tests.conftest import FUZZ, TENANT_FUZZ
from tests.fuzz import quiet
from tests.fuzz.discovery import Rpc

# A call still running after this long is a hang: the service should have answered or given up.
DEADLINE = 10.0
# A server stream is read for at most this many messages. A live stream (`Stream*` RPCs: a feed
# that follows new entries) with nothing more to send is not a hang but waiting, so its reads are
# awaited this long only; any other stream (an export) must end or send within the deadline.
STREAM_MESSAGES = 3
LIVE_WAIT = 0.5
SCHEMAS = ("tagging", "audience", "tasks", "journeys")
# Codes that are never a valid answer to a request that is only malformed.
BROKEN = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE})


def _same(data: bytes) -> bytes:
    return data


async def call(channel: grpc.aio.Channel, rpc: Rpc, payload: bytes) -> grpc.aio.AioRpcError | None:
    """Sends `payload` as the request of `rpc` in the fuzz tenant; the error it failed with, if any."""
    try:
        if rpc.client_streaming:
            await _client_stream(channel, rpc, payload)
        elif rpc.server_streaming:
            await _server_stream(channel, rpc, payload)
        else:
            unary = channel.unary_unary(rpc.path, request_serializer=_same, response_deserializer=_same)
            await unary(payload, metadata=FUZZ, timeout=DEADLINE)
    except grpc.aio.AioRpcError as error:
        return error
    return None


async def first_response(channel: grpc.aio.Channel, rpc: Rpc, payload: bytes) -> bytes:
    """The (first) response of a successful call: what the setup reads ids from."""
    unary = channel.unary_unary(rpc.path, request_serializer=_same, response_deserializer=_same)
    return await unary(payload, metadata=FUZZ, timeout=DEADLINE)


async def _client_stream(channel: grpc.aio.Channel, rpc: Rpc, payload: bytes) -> None:
    async def requests() -> object:
        yield payload

    if rpc.server_streaming:
        both = channel.stream_stream(rpc.path, request_serializer=_same, response_deserializer=_same)
        stream = both(requests(), metadata=FUZZ, timeout=DEADLINE)  # type: ignore[arg-type]
        await _drain(stream)
        return
    upload = channel.stream_unary(rpc.path, request_serializer=_same, response_deserializer=_same)
    await upload(requests(), metadata=FUZZ, timeout=DEADLINE)  # type: ignore[arg-type]


async def _server_stream(channel: grpc.aio.Channel, rpc: Rpc, payload: bytes) -> None:
    download = channel.unary_stream(rpc.path, request_serializer=_same, response_deserializer=_same)
    await _drain(download(payload, metadata=FUZZ, timeout=DEADLINE), live=rpc.name.startswith("Stream"))


async def _drain(
    stream: grpc.aio.UnaryStreamCall[bytes, bytes] | grpc.aio.StreamStreamCall[bytes, bytes],
    live: bool = False,
) -> None:
    """Reads a few messages, then cancels: an error arrives first, a good stream is not read out."""
    try:
        for _ in range(STREAM_MESSAGES):
            try:
                message = await asyncio.wait_for(stream.read(), LIVE_WAIT if live else None)
            except TimeoutError:
                return
            if message is grpc.aio.EOF:
                return
    finally:
        stream.cancel()


def violations(error: grpc.aio.AioRpcError) -> int:
    """How many BadRequest field violations an error carries (0 if no detail could be read)."""
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        return 0
    if status is None:
        return 0
    count = 0
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            count += len(bad_request.field_violations)
    return count


@dataclass(frozen=True)
class Problem:
    """What is wrong with one answer; None from `judge` when nothing is."""

    code: str
    text: str


def judge(error: grpc.aio.AioRpcError | None) -> Problem | None:
    if error is None:
        return None
    code = error.code()
    details = (error.details() or "")[:200]
    if code in BROKEN:
        return Problem(code.name, details)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Problem(code.name, f"no answer within {DEADLINE:.0f} s")
    if code == grpc.StatusCode.INVALID_ARGUMENT and violations(error) == 0:
        return Problem(code.name, f"no BadRequest field violation: {details}")
    return None


Picture = dict[str, tuple[int, int]]


class Fingerprint:
    """Pictures of the rows the services hold for the fuzz tenant. `take` is cheap: per table, how
    many rows and the newest transaction that wrote one (any insert, update or delete moves it,
    even an update that rewrites a row as it was). `contents` hashes every row, to confirm that a
    call the cheap picture suspects changed what the rows hold."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._tables: list[str] = []

    async def _names(self) -> list[str]:
        if not self._tables:
            async with self._db.pool.acquire() as conn:
                rows = await conn.fetch(
                    """SELECT c.table_schema, c.table_name
                       FROM information_schema.columns c
                       JOIN information_schema.tables t USING (table_schema, table_name)
                       WHERE c.column_name = 'tenant_id' AND t.table_type = 'BASE TABLE'
                         AND c.table_schema = ANY($1::text[])
                         -- Each feed sequencer notes its round's snapshot there every 50 ms
                         -- (runtime/feed_sequencer.py); what it numbers is in feed_positions.
                         AND c.table_name <> 'feed_sequencer'
                       ORDER BY 1, 2""",
                    list(SCHEMAS),
                )
            self._tables = [f'"{r["table_schema"]}"."{r["table_name"]}"' for r in rows]
        return self._tables

    async def _picture(self, measure: str) -> Picture:
        query = " UNION ALL ".join(
            f"SELECT '{t}' AS t, count(*) AS n, {measure} AS x FROM {t} AS r WHERE tenant_id = $1"
            for t in await self._names()
        )
        async with self._db.transaction(TENANT_FUZZ, readonly=True) as conn:
            rows = await conn.fetch(query, TENANT_FUZZ)
        return {r["t"]: (r["n"], int(r["x"])) for r in rows}

    async def take(self) -> Picture:
        return await self._picture("coalesce(max(r.xmin::text::bigint), 0)")

    async def contents(self) -> Picture:
        return await self._picture("coalesce(sum(hashtextextended(r::text, 0)), 0)")

    async def settle(self) -> None:
        """Waits until no background consumer owes the tenant anything (quiet.py): what changes
        after that, until a call gives them work, is the call's doing."""
        await quiet.wait(self._db)


def changed(before: Picture, after: Picture) -> list[str]:
    return sorted(t for t in after if before.get(t) != after[t])


def open_channel(port: int) -> grpc.aio.Channel:
    """A channel to a local server that sends requests of any size (the server sets the limit)."""
    return grpc.aio.insecure_channel(
        f"127.0.0.1:{port}",
        options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
    )
