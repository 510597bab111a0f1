"""The local stack behind `make up`, `make down` and `make status`.

Every component runs as a detached local process in its own session, with its log under the run
folder (`.run/` unless MEMBEROPS_RUN_DIR says otherwise) and its pid in a file there. `up` starts
what is not already running and waits until it is ready; `down` stops exactly what `up` started,
checking that a recorded pid still runs the recorded command before signalling it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from memberops.tagging.v1 import member_pb2, tagging_service_pb2, tagging_service_pb2_grpc
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy

from deploy import binaries, localpg
from services.common.config import Settings
from workflows.member_lookup.shared import MemberLookupInput, MemberSummary
from workflows.member_lookup.workflow import MemberLookupWorkflow

ROOT = Path(__file__).resolve().parent.parent
DEV_TOKEN = "dev-token-0123456789abcdef"
DEV_TENANT = "dev"
READY_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 10.0
SEARCH_ATTRIBUTES = ("MemberOpsTenant=Keyword", "MemberOpsMember=Keyword", "MemberOpsJourney=Keyword")


class StackError(RuntimeError):
    pass


@dataclass(frozen=True)
class Layout:
    """Where the stack keeps its state, and on which ports it listens."""

    run_dir: Path
    temporal_port: int
    temporal_ui_port: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Layout:
        run_dir = Path(env.get("MEMBEROPS_RUN_DIR", ".run"))
        return cls(
            run_dir=run_dir if run_dir.is_absolute() else ROOT / run_dir,
            temporal_port=int(env.get("MEMBEROPS_TEMPORAL_PORT", "7233")),
            temporal_ui_port=int(env.get("MEMBEROPS_TEMPORAL_UI_PORT", "8233")),
        )

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.temporal_ui_port}"

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def pgdata(self) -> Path:
        return self.run_dir / "pgdata"

    @property
    def postgres_marker(self) -> Path:
        """Exists while PostgreSQL is one of ours (not a DATABASE_URL given from outside)."""
        return self.run_dir / "postgres.started"

    def pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def logfile(self, name: str) -> Path:
        return self.logs / f"{name}.log"


@dataclass(frozen=True)
class Component:
    """One process of the stack and how to tell that it is ready."""

    name: str
    argv: list[str]
    address: str
    ready: Callable[[], Awaitable[bool]] = field(compare=False)


# --- processes ---------------------------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def running_pid(layout: Layout, component: Component) -> int | None:
    """The recorded pid if it still runs this component's command (pids get recycled)."""
    try:
        recorded = json.loads(layout.pidfile(component.name).read_text())
        pid = int(recorded["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if _cmdline(pid) == recorded.get("argv") else None


def spawn(layout: Layout, component: Component, env: Mapping[str, str]) -> int:
    layout.logs.mkdir(parents=True, exist_ok=True)
    with layout.logfile(component.name).open("ab") as log:
        process = subprocess.Popen(
            component.argv,
            cwd=ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # Record the command line as the kernel reports it, to recognise the process later.
    argv: list[str] = []
    for _ in range(50):
        argv = _cmdline(process.pid)
        if argv:
            break
        time.sleep(0.01)
    layout.pidfile(component.name).write_text(json.dumps({"pid": process.pid, "argv": argv}))
    return process.pid


def terminate(layout: Layout, component: Component) -> bool:
    """Stops the component's process group: SIGTERM, then SIGKILL after a grace period."""
    pid = running_pid(layout, component)
    layout.pidfile(component.name).unlink(missing_ok=True)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        # A zombie (exited, not yet reaped by its parent) counts as gone.
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
            return False
    return True


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- readiness ---------------------------------------------------------------------------------


async def grpc_serving(address: str) -> bool:
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            # The health stubs' type hints describe only the synchronous stub; this one is async.
            stub: Any = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
    except grpc.aio.AioRpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def temporal_reachable(address: str, ui_url: str) -> bool:
    """The frontend accepts a client and the web UI answers."""
    try:
        await Client.connect(address)
    except RuntimeError:
        return False
    return await asyncio.to_thread(http_ok, ui_url)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


async def worker_polling(settings: Settings) -> bool:
    try:
        client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
        described = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=settings.temporal_namespace,
                task_queue=TaskQueue(name=settings.temporal_task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            )
        )
    except RuntimeError:
        return False
    return len(described.pollers) > 0


async def wait_ready(layout: Layout, component: Component, pid: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if await component.ready():
            return
        if not _alive(pid):
            raise StackError(
                f"{component.name} exited while starting; last lines of "
                f"{layout.logfile(component.name)}:\n{tail(layout.logfile(component.name))}"
            )
        await asyncio.sleep(0.3)
    raise StackError(
        f"{component.name} was not ready within {READY_TIMEOUT_SECONDS:.0f} s; last lines of "
        f"{layout.logfile(component.name)}:\n{tail(layout.logfile(component.name))}"
    )


# --- the stack ---------------------------------------------------------------------------------


def service_env(layout: Layout, env: Mapping[str, str], database_url: str) -> dict[str, str]:
    """The environment of the services and the worker: the caller's, plus what `make up` decides."""
    merged = dict(env)
    merged.setdefault("MEMBEROPS_AUTH_TOKENS", f"{DEV_TOKEN}={DEV_TENANT}")
    merged["DATABASE_URL"] = database_url
    merged.setdefault("TEMPORAL_ADDRESS", f"127.0.0.1:{layout.temporal_port}")
    merged.setdefault("PYTHONUNBUFFERED", "1")
    return merged


def components(layout: Layout, settings: Settings) -> list[Component]:
    """Every process `make up` runs after PostgreSQL, in start order."""
    python = sys.executable
    temporal_address = f"127.0.0.1:{layout.temporal_port}"
    temporal = Component(
        name="temporal",
        argv=[
            str(binaries.temporal_cli()),
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--port",
            str(layout.temporal_port),
            "--ui-port",
            str(layout.temporal_ui_port),
            "--db-filename",
            str(layout.run_dir / "temporal.db"),
            "--ui-disable-news-fetch",
            "--log-level",
            "warn",
            *(arg for attribute in SEARCH_ATTRIBUTES for arg in ("--search-attribute", attribute)),
        ],
        address=f"{temporal_address}, UI {layout.ui_url}",
        ready=lambda: temporal_reachable(temporal_address, layout.ui_url),
    )
    services = [
        Component(
            name=name,
            argv=[python, "-m", f"services.{name}.server"],
            address=address,
            ready=lambda address=address: grpc_serving(address),  # type: ignore[misc]
        )
        for name, address in (
            ("tagging", settings.tagging_address),
            ("audience", settings.audience_address),
            ("tasks", settings.tasks_address),
        )
    ]
    worker = Component(
        name="worker",
        argv=[python, "-m", "workflows.worker"],
        address=f"task queue {settings.temporal_task_queue}",
        ready=lambda: worker_polling(settings),
    )
    return [temporal, *services, worker]


def database_url(layout: Layout, env: Mapping[str, str]) -> str:
    if env.get("DATABASE_URL"):
        return env["DATABASE_URL"]
    return localpg.start(layout.pgdata)


async def up(env: Mapping[str, str]) -> None:
    layout = Layout.from_env(env)
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    own_postgres = not env.get("DATABASE_URL")
    dsn = database_url(layout, env)
    if own_postgres:
        layout.postgres_marker.write_text(str(layout.pgdata))
    print(f"postgres   ready      {dsn if own_postgres else '(DATABASE_URL)'}")
    child_env = service_env(layout, env, dsn)
    settings = Settings.from_env(child_env)
    for component in components(layout, settings):
        pid = running_pid(layout, component)
        state = "running"
        if pid is None:
            pid = spawn(layout, component, child_env)
            state = "started"
        await wait_ready(layout, component, pid)
        print(f"{component.name:<10} {state:<10} {component.address}  (pid {pid})")
    if "MEMBEROPS_AUTH_TOKENS" not in env:
        await demo(settings)
    print_summary(layout, settings, dsn, dev_token="MEMBEROPS_AUTH_TOKENS" not in env)


async def demo(settings: Settings) -> None:
    """Shows the stack working: stores a member, then a workflow reads it back through tagging."""
    async with grpc.aio.insecure_channel(settings.tagging_address) as channel:
        stub = tagging_service_pb2_grpc.TaggingServiceStub(channel)
        await stub.UpsertMember(
            tagging_service_pb2.UpsertMemberRequest(
                member=member_pb2.Member(
                    member_id="demo-1",
                    profile=member_pb2.Profile(
                        city="Hangzhou", city_tier=member_pb2.CITY_TIER_NEW_1, register_channel="app"
                    ),
                )
            ),
            metadata=(("authorization", f"Bearer {DEV_TOKEN}"),),
            timeout=10,
        )
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    summary: MemberSummary = await client.execute_workflow(
        MemberLookupWorkflow.run,
        MemberLookupInput(tenant_id=DEV_TENANT, member_id="demo-1"),
        id="member-lookup-demo-1",
        task_queue=settings.temporal_task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    print(f"\ndemo: stored member demo-1; workflow member-lookup-demo-1 read it back: {summary}")


def print_summary(layout: Layout, settings: Settings, dsn: str, *, dev_token: bool) -> None:
    token = DEV_TOKEN if dev_token else "<a token from MEMBEROPS_AUTH_TOKENS>"
    print(
        f"""
MemberOps is up.
  tagging       {settings.tagging_address}
  audience      {settings.audience_address}
  tasks         {settings.tasks_address}
  temporal      {settings.temporal_address}   (namespace {settings.temporal_namespace}, \
task queue {settings.temporal_task_queue})
  temporal UI   {layout.ui_url}
  token         {token}{f"  (tenant {DEV_TENANT})" if dev_token else ""}
  DATABASE_URL  {dsn}
  logs          {layout.logs}/

Try:
  .venv/bin/temporal workflow list --address {settings.temporal_address}
  npx @bufbuild/buf curl --protocol grpc --http2-prior-knowledge -H 'authorization: Bearer {token}' \\
      -d '{{"name": "members/demo-1"}}' http://{settings.tagging_address}/memberops.tagging.v1.TaggingService/GetMember
Stop with: make down"""
    )


def down(env: Mapping[str, str]) -> None:
    layout = Layout.from_env(env)
    settings = Settings.from_env(service_env(layout, env, ""))
    for component in reversed(components(layout, settings)):
        stopped = terminate(layout, component)
        print(f"{component.name:<10} {'stopped' if stopped else 'not running'}")
    if layout.postgres_marker.exists():
        stopped = localpg.stop(layout.pgdata)
        layout.postgres_marker.unlink()
        print(f"{'postgres':<10} {'stopped' if stopped else 'not running'}")


async def status(env: Mapping[str, str]) -> int:
    """Prints one line per component; returns how many of them are not running."""
    layout = Layout.from_env(env)
    settings = Settings.from_env(service_env(layout, env, ""))
    down_count = 0
    if layout.postgres_marker.exists() or not env.get("DATABASE_URL"):
        pid = localpg.pid(layout.pgdata)
        print(
            f"{'postgres':<10} {'running' if pid else 'stopped':<10} {layout.pgdata}"
            + (f"  (pid {pid})" if pid else "")
        )
        down_count += pid is None
    for component in components(layout, settings):
        pid = running_pid(layout, component)
        if pid is None:
            print(f"{component.name:<10} stopped")
            down_count += 1
            continue
        readiness = "" if await component.ready() else ", NOT READY"
        print(f"{component.name:<10} {'running':<10} {component.address}  (pid {pid}{readiness})")
    return down_count


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else ""
    env = dict(os.environ)
    try:
        if command == "up":
            asyncio.run(up(env))
        elif command == "down":
            down(env)
        elif command == "status":
            asyncio.run(status(env))
        else:
            print(f"usage: {argv[0]} up|down|status", file=sys.stderr)
            return 2
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
