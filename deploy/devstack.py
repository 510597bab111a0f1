"""The local stack behind `make up`, `make down` and `make status`.

Every component runs as a detached local process in its own session (so it outlives `make up` and
one signal to its process group stops it), with its log under the run folder (`.run/` unless
MEMBEROPS_RUN_DIR says otherwise) and its pid file there. `up` starts what is not already running
and waits until each part is really usable before starting the parts that depend on it; `down`
stops exactly what `up` started, checking that a recorded pid still runs the recorded command
before signalling it, because pids get recycled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
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
from memberops.journeys.v1 import journey_pb2, journeys_service_pb2, journeys_service_pb2_grpc
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowFailureError
from temporalio.service import RPCError

from deploy import binaries, localpg, wecom_dev
from deploy import demo as demo_calls
from deploy.demo import DEMO_MEMBER
from deploy.setup import SEARCH_ATTRIBUTES as SEARCH_ATTRIBUTES  # noqa: PLC0414 (re-export for tests)
from runtime.config import ConfigError, Settings
from workflows.dispatcher.__main__ import ensure_all as ensure_dispatchers
from workflows.journeys.channels.config import ENV_PREFIX, HTTP_CHANNELS
from workflows.periodic import schedules

ROOT = Path(__file__).resolve().parent.parent
DEV_TOKEN = "dev-token-0123456789abcdef"
DEV_TENANT = "dev"
READY_TIMEOUT_SECONDS = 60.0
PROBE_TIMEOUT_SECONDS = 5.0
DEMO_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
LOG_TAIL_LINES = 30
# The shipped journeys `make up` makes live for its dev tenant, so the demo runs; everywhere else
# every journey, the shipped ones too, is a draft until an operator activates it.
DEV_LIVE_JOURNEYS = ("new-customer", "win-back")
BUF = "npx --yes @bufbuild/buf@1.75.0"  # the pin the Makefile lints with; no separate install needed


class StackError(RuntimeError):
    """Something the user has to act on; `main` prints it without a traceback and exits 1."""


@dataclass(frozen=True)
class Layout:
    """Where the stack keeps its state, and the Temporal ports (the services' come from Settings)."""

    run_dir: Path
    temporal_port: int
    temporal_ui_port: int
    outbox_port: int = 8095
    console_address: str = "127.0.0.1:8088"
    # The local WeCom server's API (MEMBEROPS_DEV_WECOM=1 runs it).
    wecom_port: int = 8096

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Layout:
        run_dir = Path(env.get("MEMBEROPS_RUN_DIR") or ".run")
        return cls(
            run_dir=run_dir if run_dir.is_absolute() else ROOT / run_dir,
            temporal_port=_port(env, "MEMBEROPS_TEMPORAL_PORT", 7233),
            temporal_ui_port=_port(env, "MEMBEROPS_TEMPORAL_UI_PORT", 8233),
            outbox_port=_port(env, "MEMBEROPS_OUTBOX_PORT", 8095),
            console_address=env.get("MEMBEROPS_CONSOLE_ADDRESS") or "127.0.0.1:8088",
            wecom_port=_port(env, "MEMBEROPS_DEV_WECOM_PORT", 8096),
        )

    @property
    def console_url(self) -> str:
        return f"http://{self.console_address}"

    @property
    def outbox_url(self) -> str:
        return f"http://127.0.0.1:{self.outbox_port}/v1/messages"

    @property
    def outbox_file(self) -> Path:
        """Every message the local outbox took, one JSON line each."""
        return self.run_dir / "outbox.jsonl"

    @property
    def temporal_address(self) -> str:
        return f"127.0.0.1:{self.temporal_port}"

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
        """Exists while PostgreSQL is one `up` started (not a DATABASE_URL given from outside)."""
        return self.run_dir / "postgres.started"

    def pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def logfile(self, name: str) -> Path:
        return self.logs / f"{name}.log"


# The processes that serve /metrics under `make up`, on 127.0.0.1 from this port up (one each).
METRICS_PROCESSES = ("tagging", "audience", "tasks", "journeys", "worker")
FIRST_METRICS_PORT = 9101


def metrics_addresses(env: Mapping[str, str]) -> dict[str, str]:
    """Where each process serves Prometheus' /metrics: 127.0.0.1:9101-9105 in METRICS_PROCESSES'
    order, or the port in MEMBEROPS_<NAME>_METRICS_PORT."""
    return {
        name: f"127.0.0.1:{_port(env, f'MEMBEROPS_{name.upper()}_METRICS_PORT', FIRST_METRICS_PORT + i)}"
        for i, name in enumerate(METRICS_PROCESSES)
    }


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name) or str(default)
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise StackError(f"{name} must be a TCP port number, got {raw!r}")
    return int(raw)


@dataclass(frozen=True)
class Probe:
    """The answer of a readiness check: whether the component is usable, and what it said."""

    ready: bool
    detail: str


@dataclass(frozen=True)
class Component:
    """One process of the stack: how to run it, what it binds, how to tell that it is ready."""

    name: str
    argv: list[str]
    env: Mapping[str, str] = field(repr=False)
    # What `up` and `status` show, and the host:port pairs that must be free before it starts.
    address: str
    binds: tuple[str, ...]
    # Called with the component's pid, so a check cannot be fooled by someone else's process.
    probe: Callable[[int], Awaitable[Probe]] = field(compare=False, repr=False)


# --- processes ---------------------------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat.rpartition(") ")[2].startswith("Z")


def running_pid(layout: Layout, name: str) -> int | None:
    """The recorded pid if it still runs the recorded command line (a recycled pid does not)."""
    try:
        recorded = json.loads(layout.pidfile(name).read_text())
        pid = int(recorded["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if _alive(pid) and _cmdline(pid) == recorded.get("argv") else None


def port_taken(address: str) -> bool:
    """Whether something already listens on `host:port`, found by trying to bind it ourselves."""
    host, _, port = address.rpartition(":")
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM
        )[0]
    except (OSError, ValueError):
        return False  # let the component itself report an address it cannot use
    with socket.socket(family, kind, proto) as sock:
        # Like the servers themselves: a recently closed port (TIME_WAIT) is free, a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError:
            return True
    return False


def spawn(layout: Layout, component: Component) -> int:
    """Starts the component detached, appending to its log, and records its pid and command line."""
    taken = [address for address in component.binds if port_taken(address)]
    if taken:
        raise StackError(
            f"cannot start {component.name}: {', '.join(taken)} is already in use by a process "
            f"this stack did not start (see `ss -ltnp`), or set another port through the environment"
        )
    layout.logs.mkdir(parents=True, exist_ok=True)
    with layout.logfile(component.name).open("ab") as log:
        log.write(
            f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} make up: {' '.join(component.argv)}\n".encode()
        )
        log.flush()
        process = subprocess.Popen(
            component.argv,
            cwd=ROOT,
            env=dict(component.env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # Popen returns once exec succeeded, so /proc/<pid>/cmdline is already the component's argv.
    record = {"pid": process.pid, "argv": component.argv}
    layout.pidfile(component.name).write_text(json.dumps(record) + "\n")
    return process.pid


def terminate(layout: Layout, name: str) -> bool:
    """Stops the recorded process group: SIGTERM, then SIGKILL after a grace period."""
    pid = running_pid(layout, name)
    layout.pidfile(name).unlink(missing_ok=True)
    if pid is None:
        return False
    _signal_group(pid, signal.SIGTERM)
    if not _wait_gone(pid, STOP_TIMEOUT_SECONDS):
        print(f"{name:<10} did not stop within {STOP_TIMEOUT_SECONDS:.0f} s; killing it")
        _signal_group(pid, signal.SIGKILL)
        _wait_gone(pid, 5)
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # The component leads its own session and process group (start_new_session), so its pid is the pgid.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- readiness ---------------------------------------------------------------------------------


async def grpc_health(address: str) -> Probe:
    """The standard gRPC health check for the whole server (service "")."""
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            # The health stubs' type hints describe only the synchronous stub; this one is async.
            stub: Any = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
    except grpc.aio.AioRpcError as error:
        return Probe(False, f"health check failed: {error.code().name}")
    state = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return Probe(reply.status == health_pb2.HealthCheckResponse.SERVING, f"health {state}")


async def temporal_health(address: str, ui_url: str) -> Probe:
    """Ready when the frontend accepts a client (what the worker needs) and the web UI answers."""
    try:
        await Client.connect(address)
    except RuntimeError:
        return Probe(False, "frontend not accepting clients")
    if not await asyncio.to_thread(_http_ok, ui_url):
        return Probe(False, "web UI not answering")
    return Probe(True, "frontend and web UI answer")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


async def worker_polling(settings: Settings, pid: int) -> Probe:
    """Ready when this very worker polls the workflow task queue.

    Temporal lists a poller for minutes after it is gone, so a worker from a previous `up` would
    look ready; the SDK's default identity is `<pid>@<host>`, which tells this one apart.
    """
    queue = settings.temporal_task_queue
    try:
        client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
        described = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=settings.temporal_namespace,
                task_queue=TaskQueue(name=queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            )
        )
    except (RuntimeError, RPCError) as error:
        return Probe(False, f"cannot ask Temporal about task queue {queue}: {error}")
    if any(poller.identity.startswith(f"{pid}@") for poller in described.pollers):
        return Probe(True, f"polling task queue {queue}")
    return Probe(False, f"not polling task queue {queue} yet")


async def probe(component: Component, pid: int) -> Probe:
    """Runs the component's check with a bound, so a hung connection cannot stall `up` or `status`."""
    try:
        return await asyncio.wait_for(component.probe(pid), PROBE_TIMEOUT_SECONDS)
    except TimeoutError:
        return Probe(False, f"no answer within {PROBE_TIMEOUT_SECONDS:.0f} s")


async def wait_ready(layout: Layout, component: Component, pid: int) -> Probe:
    """Waits for the component's check; fails with the end of its log if it exits or never gets ready."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while True:
        result = await probe(component, pid)
        # Checked after the probe as well: ready-looking answers from a process that just died
        # (say, on a port someone else holds) must not count.
        if not _alive(pid):
            raise _failure(layout, component, "exited while starting")
        if result.ready:
            return result
        if time.monotonic() >= deadline:
            raise _failure(
                layout, component, f"was not ready within {READY_TIMEOUT_SECONDS:.0f} s ({result.detail})"
            )
        await asyncio.sleep(0.3)


def _failure(layout: Layout, component: Component, what: str) -> StackError:
    log = layout.logfile(component.name)
    return StackError(
        f"{component.name} {what}; last {LOG_TAIL_LINES} lines of {log}:\n{tail(log)}\n\n"
        "What started is still running: fix the cause and run `make up` again, or `make down`."
    )


# --- the stack ---------------------------------------------------------------------------------


def uses_dev_token(env: Mapping[str, str]) -> bool:
    return not env.get("MEMBEROPS_AUTH_TOKENS")


def child_env(layout: Layout, env: Mapping[str, str], database_url: str) -> dict[str, str]:
    """The environment of the services and the worker: the caller's, plus what the stack decides."""
    merged = dict(env)
    if uses_dev_token(env):
        merged["MEMBEROPS_AUTH_TOKENS"] = f"{DEV_TOKEN}={DEV_TENANT}"
    merged["DATABASE_URL"] = database_url
    # Always the Temporal this stack runs, whatever TEMPORAL_ADDRESS the shell happens to have.
    merged["TEMPORAL_ADDRESS"] = layout.temporal_address
    merged.setdefault("PYTHONUNBUFFERED", "1")
    return merged


def components(layout: Layout, env: Mapping[str, str], settings: Settings) -> list[Component]:
    """Every process `up` runs after PostgreSQL, in start order (`down` stops them in reverse)."""
    python = sys.executable
    temporal = Component(
        name="temporal",
        argv=[
            str(binaries.temporal_cli()),
            *("server", "start-dev", "--ip", "127.0.0.1"),
            *("--port", str(layout.temporal_port), "--ui-port", str(layout.temporal_ui_port)),
            *("--db-filename", str(layout.run_dir / "temporal.db"), "--ui-disable-news-fetch"),
            *("--log-level", "warn"),
            *(arg for attribute in SEARCH_ATTRIBUTES for arg in ("--search-attribute", attribute)),
        ],
        env=env,
        address=f"{layout.temporal_address}, UI {layout.ui_url}",
        binds=(layout.temporal_address, f"127.0.0.1:{layout.temporal_ui_port}"),
        probe=lambda _pid: temporal_health(layout.temporal_address, layout.ui_url),
    )
    metrics = metrics_addresses(env)
    wecom = wecom_dev.configured(env, layout.wecom_port)
    local_wecom: list[Component] = []
    if wecom is not None:
        env = {**env, **wecom.service_env()}
        local_wecom.append(
            Component(
                name="wecom",
                argv=wecom.argv(python, DEV_TENANT),
                env=env,
                address=f"{wecom.api_url}, callbacks to {wecom.callback_url(DEV_TENANT)}",
                binds=(f"127.0.0.1:{wecom.api_port}", wecom.callback_address),
                probe=lambda _pid: wecom_health(wecom.api_url),
            )
        )
    services = [_service(name, address, env, metrics[name]) for name, address in service_addresses(settings)]
    outbox = Component(
        name="outbox",
        argv=[python, "-m", "deploy.outbox", str(layout.outbox_port), str(layout.outbox_file)],
        env=env,
        address=f"{layout.outbox_url}, messages in {layout.outbox_file}",
        binds=(f"127.0.0.1:{layout.outbox_port}",),
        probe=lambda _pid: outbox_health(layout.outbox_url),
    )
    worker = Component(
        name="worker",
        argv=[python, "-m", "workflows.worker"],
        env={**env, **outbox_channels(layout, env), "MEMBEROPS_METRICS_ADDRESS": metrics["worker"]},
        address=f"task queue {settings.temporal_task_queue}",
        binds=(metrics["worker"],),
        probe=lambda pid: worker_polling(settings, pid),
    )
    console = Component(
        name="console",
        argv=[python, "-m", "console"],
        env={**env, "MEMBEROPS_CONSOLE_ADDRESS": layout.console_address},
        address=layout.console_url,
        binds=(layout.console_address,),
        probe=lambda _pid: console_health(layout.console_url),
    )
    return [temporal, *local_wecom, *services, outbox, worker, console]


async def wecom_health(url: str) -> Probe:
    """Ready when the local WeCom answers its tag library (it needs no token on `/_local`)."""
    if await asyncio.to_thread(_http_ok, f"{url}/_local/tags"):
        return Probe(True, "answers /_local/tags")
    return Probe(False, "not answering /_local/tags")


async def console_health(url: str) -> Probe:
    """Ready when the console answers its /healthz (it reaches the services per page, not at start)."""
    if await asyncio.to_thread(_http_ok, f"{url}/healthz"):
        return Probe(True, "answers /healthz")
    return Probe(False, "not answering /healthz")


def outbox_channels(layout: Layout, env: Mapping[str, str]) -> dict[str, str]:
    """The worker's provider for each HTTP channel the environment names none for: the local
    outbox, so journeys under `make up` deliver to `outbox.jsonl` instead of skipping their sends."""
    chosen: dict[str, str] = {}
    for channel in HTTP_CHANNELS:
        prefix = f"MEMBEROPS_{ENV_PREFIX[channel]}"
        if not env.get(f"{prefix}_URL"):
            chosen[f"{prefix}_URL"] = f"{layout.outbox_url}?channel={channel}"
            chosen[f"{prefix}_BATCH_URL"] = f"{layout.outbox_url}:batch?channel={channel}"
    return chosen


async def outbox_health(url: str) -> Probe:
    def stats() -> str:
        with urllib.request.urlopen(url.replace("/v1/messages", "/stats"), timeout=1) as reply:
            return json.dumps(json.loads(reply.read()))

    try:
        return Probe(True, f"taken {await asyncio.to_thread(stats)}")
    except OSError as error:
        return Probe(False, f"not answering: {error}")


def service_addresses(settings: Settings) -> list[tuple[str, str]]:
    return [
        ("tagging", settings.tagging_address),
        ("audience", settings.audience_address),
        ("tasks", settings.tasks_address),
        ("journeys", settings.journeys_address),
    ]


def _service(name: str, address: str, env: Mapping[str, str], metrics: str) -> Component:
    return Component(
        name=name,
        argv=[sys.executable, "-m", f"services.{name}.server"],
        env={**env, "MEMBEROPS_METRICS_ADDRESS": metrics},
        address=address,
        binds=(address, metrics),
        probe=lambda _pid: grpc_health(address),
    )


def start_postgres(layout: Layout, env: Mapping[str, str]) -> str:
    """Returns the DATABASE_URL: the caller's if set, else the embedded cluster's (started if needed)."""
    if env.get("DATABASE_URL"):
        print(f"{'postgres':<10} {'external':<16} DATABASE_URL from the environment")
        return env["DATABASE_URL"]
    state = "already running" if localpg.pid(layout.pgdata) else "started"
    dsn = localpg.start(layout.pgdata)
    layout.postgres_marker.write_text(f"{layout.pgdata}\n")
    print(f"{'postgres':<10} {state:<16} {layout.pgdata}  (pid {localpg.pid(layout.pgdata)})")
    return dsn


async def up(env: Mapping[str, str]) -> None:
    layout = Layout.from_env(env)
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    dsn = start_postgres(layout, env)
    service_env = child_env(layout, env, dsn)
    settings = Settings.from_env(service_env)
    settings.require_tokens()
    for component in components(layout, service_env, settings):
        pid = running_pid(layout, component.name)
        state = "already running"
        if pid is None:
            pid = spawn(layout, component)
            state = "started"
        result = await wait_ready(layout, component, pid)
        print(f"{component.name:<10} {state:<16} {component.address}  (pid {pid}, {result.detail})")
    await ensure_schedules(settings, service_env)
    await dispatchers(layout, settings)
    if uses_dev_token(env):
        await activate_shipped(layout, settings, scaled="MEMBEROPS_JOURNEY_TIME_SCALE" in env)
        await demo(layout, settings, service_env)
    else:
        print(
            f"{'journeys':<10} {'drafts':<16} shipped journeys stay drafts until activated (ActivateJourney)"
        )
    print_summary(
        layout, settings, dsn, metrics_addresses(service_env), service_env, dev_token=uses_dev_token(env)
    )


async def ensure_schedules(settings: Settings, env: Mapping[str, str]) -> None:
    """The periodic jobs' Temporal Schedules, made or brought up to date (workflows/periodic)."""
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    plan = schedules.Plan.from_env(env)
    for sid, what in await schedules.ensure(
        client, settings.auth_tokens.values(), plan, settings.temporal_task_queue
    ):
        print(f"{'schedule':<10} {what:<16} {sid}")


async def dispatchers(layout: Layout, settings: Settings) -> None:
    """One journey dispatcher per configured tenant (see workflows/dispatcher), started once."""
    try:
        started = await asyncio.wait_for(ensure_dispatchers(settings), DEMO_TIMEOUT_SECONDS)
    except (grpc.aio.AioRpcError, RPCError, RuntimeError, TimeoutError) as error:
        raise StackError(
            f"the stack started but its journey dispatchers did not: {error!r}\n"
            f"Look at {layout.logs}/worker.log."
        ) from error
    for each in started:
        state = "started" if each.started else "already running"
        created = f", created audience {', '.join(each.created)}" if each.created else ""
        print(f"{'dispatcher':<10} {state:<16} {each.workflow_id}  (following the feeds{created})")


def version_to_activate(journey: journey_pb2.Journey, *, scaled: bool) -> int:
    """The version of a shipped dev journey `make up` makes live, or 0 for none: the latest of a
    journey never activated; under a time scale, also the latest (scaled) of an active journey
    whose live version is another. Paused and archived journeys are the operator's."""
    if journey.state == journey_pb2.JOURNEY_STATE_DRAFT and not journey.live_version:
        return journey.latest_version
    active = journey.state == journey_pb2.JOURNEY_STATE_ACTIVE
    if scaled and active and journey.live_version != journey.latest_version:
        return journey.latest_version
    return 0


async def activate_shipped(layout: Layout, settings: Settings, *, scaled: bool = False) -> None:
    """Makes the dev tenant's shipped triggered journeys live through ActivateJourney, as an operator
    would; a journey an operator has paused or archived before is left as it is. With a time scale
    (`scaled`), the worker stored the journeys at that scale as their latest version, and an active
    journey's latest version goes live (activating a running journey's new version), so that a
    second `make up` at another scale runs at that scale."""
    auth = (("authorization", f"Bearer {DEV_TOKEN}"),)
    try:
        async with grpc.aio.insecure_channel(settings.journeys_address) as channel:
            stub = journeys_service_pb2_grpc.JourneyServiceStub(channel)
            for key in DEV_LIVE_JOURNEYS:
                name = f"journeys/{key}"
                journey = await stub.GetJourney(
                    journeys_service_pb2.GetJourneyRequest(name=name),
                    metadata=auth,
                    timeout=DEMO_TIMEOUT_SECONDS,
                )
                state = journey_pb2.JourneyState.Name(journey.state).removeprefix("JOURNEY_STATE_")
                what = f"already {state.lower()}"
                version = version_to_activate(journey, scaled=scaled)
                if version:
                    journey = await stub.ActivateJourney(
                        journeys_service_pb2.ActivateJourneyRequest(name=name, version=version),
                        metadata=auth,
                        timeout=DEMO_TIMEOUT_SECONDS,
                    )
                    what = "activated"
                print(
                    f"{'journey':<10} {what:<16} {name} version {journey.live_version}  (tenant {DEV_TENANT})"
                )
    except grpc.aio.AioRpcError as error:
        raise StackError(
            f"the stack started but activating the shipped journeys failed: {error.code().name}: "
            f"{error.details()}\nLook at {layout.logs}/journeys.log."
        ) from error
    print(f"{'':<10} {'':<16} only for the dev tenant: elsewhere shipped journeys are drafts until activated")


async def demo(layout: Layout, settings: Settings, env: Mapping[str, str]) -> None:
    """Shows the stack working end to end (see deploy/demo.py), and WeCom's round trip when the
    local WeCom runs (deploy/wecom_dev.py)."""
    wecom = wecom_dev.configured(env, layout.wecom_port)
    try:
        if wecom is not None:
            await asyncio.wait_for(wecom_dev.connect(settings, wecom, DEV_TOKEN), DEMO_TIMEOUT_SECONDS)
        contact = None if wecom is None else wecom_dev.contact()
        result = await asyncio.wait_for(
            demo_calls.run(settings, DEV_TENANT, DEV_TOKEN, contact), DEMO_TIMEOUT_SECONDS
        )
        if wecom is not None:
            shown = await asyncio.wait_for(
                wecom_dev.show(settings, wecom, DEV_TOKEN, DEMO_MEMBER, result.journey),
                wecom_dev.ROUND_TRIP_SECONDS * 4,
            )
    except (grpc.aio.AioRpcError, RPCError, WorkflowFailureError, RuntimeError, TimeoutError) as error:
        raise StackError(
            f"the stack started but the demo call failed: {error!r}\n"
            f"Look at the logs under {layout.logs}/ (tagging.log, journeys.log, worker.log)."
        ) from error
    print("\n" + demo_calls.describe(result))
    if wecom is not None:
        print(wecom_dev.describe(shown))


def print_summary(
    layout: Layout,
    settings: Settings,
    dsn: str,
    metrics: Mapping[str, str],
    env: Mapping[str, str],
    *,
    dev_token: bool,
) -> None:
    token = DEV_TOKEN if dev_token else "<a token from MEMBEROPS_AUTH_TOKENS>"
    scrapes = f"\n{'':<16}".join(f"{name:<9} http://{address}/metrics" for name, address in metrics.items())
    tenant = f"  (tenant {DEV_TENANT})" if dev_token else ""
    member = DEMO_MEMBER if dev_token else "m-1"
    local_wecom = wecom_dev.configured(env, layout.wecom_port)
    wecom = (
        ""
        if local_wecom is None
        else f"\n  WeCom (local) {local_wecom.api_url}  (customers, tags, messages: GET /_local/... )"
    )
    print(
        f"""
MemberOps is up.
  tagging       {settings.tagging_address}
  audience      {settings.audience_address}
  tasks         {settings.tasks_address}
  journeys      {settings.journeys_address}
  temporal      {settings.temporal_address}  (namespace {settings.temporal_namespace}, \
task queue {settings.temporal_task_queue})
  temporal UI   {layout.ui_url}
  console       {layout.console_url}  (sign in with the token below)
  token         {token}{tenant}
  DATABASE_URL  {dsn}
  logs          {layout.logs}/
  messages      {layout.outbox_file}  (SMS and app push sends, from the local outbox){wecom}
  metrics       {scrapes}

Try:
  .venv/bin/temporal workflow list --address {settings.temporal_address}
  {BUF} curl --protocol grpc --http2-prior-knowledge -H 'authorization: Bearer {token}' \\
      -d '{{"name":"members/{member}"}}' \\
      http://{settings.tagging_address}/memberops.tagging.v1.TaggingService/GetMember
  {BUF} curl --protocol grpc --http2-prior-knowledge -H 'authorization: Bearer {token}' \\
      -d '{{}}' http://{settings.journeys_address}/memberops.journeys.v1.JourneyService/ListJourneys
Stop with: make down"""
    )


def down(env: Mapping[str, str]) -> None:
    layout = Layout.from_env(env)
    settings = Settings.from_env(child_env(layout, env, ""))
    for component in reversed(components(layout, env, settings)):
        stopped = terminate(layout, component.name)
        print(f"{component.name:<10} {'stopped' if stopped else 'not running'}")
    if layout.postgres_marker.exists():
        stopped = localpg.stop(layout.pgdata)
        layout.postgres_marker.unlink()
        print(f"{'postgres':<10} {'stopped' if stopped else 'not running'}")


async def status(env: Mapping[str, str]) -> None:
    """Prints one line per component: running (pid, address, what its check says) or stopped."""
    layout = Layout.from_env(env)
    service_env = child_env(layout, env, "")
    settings = Settings.from_env(service_env)
    print_postgres_status(layout, env)
    for component in components(layout, service_env, settings):
        pid = running_pid(layout, component.name)
        if pid is None:
            print(f"{component.name:<10} stopped")
            continue
        result = await probe(component, pid)
        print(f"{component.name:<10} {'running':<16} {component.address}  (pid {pid}, {result.detail})")


def print_postgres_status(layout: Layout, env: Mapping[str, str]) -> None:
    if env.get("DATABASE_URL") and not layout.postgres_marker.exists():
        print(f"{'postgres':<10} {'external':<16} DATABASE_URL from the environment")
        return
    pid = localpg.pid(layout.pgdata)
    if pid is None:
        print(f"{'postgres':<10} stopped")
    else:
        print(f"{'postgres':<10} {'running':<16} {layout.pgdata}  (pid {pid})")


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
    except (StackError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
