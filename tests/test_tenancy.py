"""Tenants never meet: not through the API, and not in SQL that forgets its tenant filter."""

from __future__ import annotations

import asyncpg
import grpc
import pytest
from memberops.tagging.v1 import member_pb2, tagging_service_pb2, tagging_service_pb2_grpc

from runtime import app
from runtime.db import Database
from services.tagging import server as tagging_server
from tests.conftest import ACME, GLOBEX, TENANT_ACME, TENANT_GLOBEX, unique
from workflows.journeys import store as journeys_store


async def test_a_member_of_one_tenant_is_invisible_to_another(tagging_channel: grpc.aio.Channel) -> None:
    stub = tagging_service_pb2_grpc.TaggingServiceStub(tagging_channel)
    member_id = unique()
    await stub.UpsertMember(
        tagging_service_pb2.UpsertMemberRequest(
            member=member_pb2.Member(member_id=member_id, profile=member_pb2.Profile(city="A"))
        ),
        metadata=ACME,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetMember(
            tagging_service_pb2.GetMemberRequest(name=f"members/{member_id}"), metadata=GLOBEX
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_same_member_id_in_two_tenants_are_two_members(tagging_channel: grpc.aio.Channel) -> None:
    stub = tagging_service_pb2_grpc.TaggingServiceStub(tagging_channel)
    member_id = unique()
    for metadata, city in ((ACME, "Shanghai"), (GLOBEX, "Madrid")):
        await stub.UpsertMember(
            tagging_service_pb2.UpsertMemberRequest(
                member=member_pb2.Member(member_id=member_id, profile=member_pb2.Profile(city=city))
            ),
            metadata=metadata,
        )
    request = tagging_service_pb2.GetMemberRequest(name=f"members/{member_id}")
    assert (await stub.GetMember(request, metadata=ACME)).profile.city == "Shanghai"
    assert (await stub.GetMember(request, metadata=GLOBEX)).profile.city == "Madrid"


async def test_row_level_security_hides_other_tenants_from_unfiltered_sql(db: Database) -> None:
    member_id = unique()
    async with db.transaction(TENANT_ACME) as conn:
        await conn.execute(
            "INSERT INTO tagging.members (tenant_id, member_id) VALUES ($1, $2)", TENANT_ACME, member_id
        )
    async with db.transaction(TENANT_GLOBEX) as conn:
        # No tenant filter on purpose: the policy alone must keep acme's row out.
        seen = await conn.fetch("SELECT tenant_id FROM tagging.members WHERE member_id = $1", member_id)
        everyone = await conn.fetch("SELECT DISTINCT tenant_id FROM tagging.members")
    assert seen == []
    assert {r["tenant_id"] for r in everyone} <= {TENANT_GLOBEX}


async def test_row_level_security_refuses_writes_into_another_tenant(db: Database) -> None:
    async with db.transaction(TENANT_GLOBEX) as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(
                "INSERT INTO tagging.members (tenant_id, member_id) VALUES ($1, $2)", TENANT_ACME, unique()
            )


async def test_no_tenant_bound_sees_nothing(db: Database, tagging: app.RunningService) -> None:
    async with db.transaction("") as conn:
        assert await conn.fetchval("SELECT count(*) FROM tagging.members") == 0


async def test_every_service_table_has_tenant_id_and_forced_row_level_security(
    db: Database, pg_dsn: str
) -> None:
    await app.migrate(pg_dsn, tagging_server.DEFINITION)
    await journeys_store.migrate(pg_dsn)
    conn = await asyncpg.connect(pg_dsn)
    try:
        tables = await conn.fetch(
            """SELECT n.nspname AS schema, c.relname AS name, c.relrowsecurity AS rls,
                      c.relforcerowsecurity AS forced,
                      EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid
                              AND a.attname = 'tenant_id' AND NOT a.attisdropped) AS has_tenant,
                      EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid) AS has_policy
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind IN ('r', 'p') AND n.nspname IN ('tagging', 'audience', 'tasks', 'journeys')
                 AND c.relname <> 'schema_migrations'"""
        )
    finally:
        await conn.close()
    assert tables, "no service tables found"
    offenders = [
        f"{t['schema']}.{t['name']}"
        for t in tables
        if not (t["rls"] and t["forced"] and t["has_tenant"] and t["has_policy"])
    ]
    assert offenders == []
