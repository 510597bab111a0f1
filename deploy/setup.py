"""`python -m deploy.cli setup`: what a Temporal namespace needs before MemberOps runs in it.

Registers the search attributes the workflows set (so `temporal workflow list --query` finds a
tenant's, a member's or a journey's runs) through the operator service, then creates or updates
the periodic jobs' schedules (workflows/periodic/schedules.py). `make up` passes the attributes to
its dev server instead; a real cluster (compose, the Kubernetes setup Job) runs this once per
deployment. Idempotent: an attribute already registered with the right type is left alone (one
registered with another type stops setup: the workflows could not set it), and a schedule that
exists is brought to the configured times.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from runtime import logs
from runtime.config import Settings
from workflows.periodic import schedules
from workflows.worker import connect

# `Name=Type`, the form `temporal server start-dev --search-attribute` takes (deploy/devstack.py
# passes them so; tests and benchmarks start their servers with them).
SEARCH_ATTRIBUTES = ("MemberOpsTenant=Keyword", "MemberOpsMember=Keyword", "MemberOpsJourney=Keyword")
# Another setup may register between our listing and our adding (two Jobs, a retried one).
REGISTER_ATTEMPTS = 3


class SetupError(RuntimeError):
    """The namespace cannot be made ready without an operator (e.g. an attribute of another type)."""


def wanted_attributes() -> dict[str, IndexedValueType.ValueType]:
    """SEARCH_ATTRIBUTES as the operator service takes them: name -> indexed value type."""
    wanted: dict[str, IndexedValueType.ValueType] = {}
    for spec in SEARCH_ATTRIBUTES:
        name, _, kind = spec.partition("=")
        wanted[name] = IndexedValueType.Value(f"INDEXED_VALUE_TYPE_{kind.upper()}")
    return wanted


async def register_search_attributes(client: Client, namespace: str) -> list[tuple[str, str]]:
    """Adds the attributes the namespace lacks; returns (name, "registered" | "already registered")."""
    wanted = wanted_attributes()
    added: set[str] = set()
    for attempt in range(1, REGISTER_ATTEMPTS + 1):
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace)
        )
        existing = dict(listed.custom_attributes)
        missing = {name: kind for name, kind in wanted.items() if name not in existing}
        for name, kind in wanted.items():
            if name in existing and existing[name] != kind:
                raise SetupError(
                    f"search attribute {name} is registered in namespace {namespace!r} as "
                    f"{IndexedValueType.Name(existing[name])}; MemberOps sets it as "
                    f"{IndexedValueType.Name(kind)} (remove it with `temporal operator search-attribute "
                    "remove` first)"
                )
        if not missing:
            break
        try:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
            )
        except RPCError as error:
            # Someone registered one of them meanwhile: list again and add what is still missing.
            if error.status != RPCStatusCode.ALREADY_EXISTS or attempt == REGISTER_ATTEMPTS:
                raise
            continue
        added.update(missing)
        break
    return [(name, "registered" if name in added else "already registered") for name in wanted]


@dataclass(frozen=True)
class Report:
    attributes: list[tuple[str, str]]
    schedules: list[tuple[str, str]]

    def lines(self) -> list[str]:
        return [
            *(f"{'search attribute':<17} {what:<19} {name}" for name, what in self.attributes),
            *(f"{'schedule':<17} {what:<19} {sid}" for sid, what in self.schedules),
        ]


async def run(settings: Settings, env: Mapping[str, str]) -> Report:
    """Search attributes, then schedules (a schedule's workflow sets none, but the order keeps one
    rule: nothing starts in a namespace before its attributes exist)."""
    tenants = settings.require_tokens().values()
    plan = schedules.Plan.from_env(env)
    client = await connect(settings)  # waits for Temporal while it starts, as the worker does
    attributes = await register_search_attributes(client, settings.temporal_namespace)
    ensured = await schedules.ensure(client, tenants, plan, settings.temporal_task_queue)
    return Report(attributes, ensured)


def main() -> int:
    settings = Settings.from_env()
    logs.configure(settings.log_level, service="setup")
    try:
        report = asyncio.run(run(settings, os.environ))
    except SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except RPCError as error:
        # e.g. a namespace that does not exist yet: the Job fails with what Temporal said, and retries.
        print(
            f"error: Temporal at {settings.temporal_address} (namespace {settings.temporal_namespace!r}) "
            f"answered {error.status.name}: {error.message}",
            file=sys.stderr,
        )
        return 1
    print("\n".join(report.lines()))
    return 0
