"""Replicas as real processes for tests/test_replicas.py: two of each service (`python -m
services.<name>.server`) and two workers (`python -m workflows.worker`), over the session's
PostgreSQL and Temporal dev server, serving one tenant of their own on a task queue of their own.

Peers find each other as production does behind a headless service: one gRPC target naming every
replica (`ipv4:127.0.0.1:p1,127.0.0.1:p2`), balanced call by call with round_robin
(runtime/channels.py), so a dead replica costs its in-flight calls, never the caller's channel.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families

from tests.grpc_helpers import health_stub
from tests.ports import free_ports
from tests.waiting import eventually

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("tagging", "audience", "tasks", "journeys")
REPLICAS = 2
# Every replica keeps a small pool: ten processes share the session's PostgreSQL with the suite.
POOL_MAX = 4

# What a caller of the replicas does (the test's clients): spread calls over both, and send a call
# the dead replica dropped to the other one. Only calls that are safe to repeat are sent this way:
# every write the test makes carries its id (member, order and event ids, request ids).
CLIENT_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)


def target(ports: Sequence[int]) -> str:
    """One gRPC target over every replica's port."""
    return "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)


def client_channel(ports: Sequence[int]) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        target(ports),
        options=[
            ("grpc.service_config", CLIENT_SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
            ("grpc.max_reconnect_backoff_ms", 5000),
        ],
    )


@dataclass
class Process:
    """One replica: its process, where it listens (services) and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int = 0
    log: Path = field(default_factory=Path)
    # Where it serves /metrics (services).
    metrics_port: int = 0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye to PostgreSQL or Temporal, as when a node dies."""
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass(frozen=True)
class ClusterConfig:
    dsn: str
    token: str
    tenant_id: str
    temporal_address: str
    task_queue: str
    # Environment of the workers' delivery channels (MEMBEROPS_SMS_URL and friends).
    channels: Mapping[str, str]
    logs: Path


@dataclass
class Cluster:
    config: ClusterConfig
    ports: dict[str, list[int]]
    services: dict[str, list[Process]] = field(default_factory=dict)
    workers: list[Process] = field(default_factory=list)

    def everything(self) -> list[Process]:
        return [*(p for replicas in self.services.values() for p in replicas), *self.workers]

    def channel(self, service: str) -> grpc.aio.Channel:
        return client_channel(self.ports[service])

    def worker_of(self, identity: str) -> Process:
        """The worker whose Temporal identity (`{pid}@{host}`, the SDK's default) this is."""
        (found,) = [w for w in self.workers if identity.startswith(f"{w.pid}@")]
        return found

    def output(self) -> str:
        """The last lines of every replica's output, for a failure message."""
        return "\n".join(
            f"--- {p.name} (pid {p.pid}, {'running' if p.alive() else f'exit {p.popen.returncode}'})\n"
            + "\n".join(p.log.read_text(errors="replace").splitlines()[-15:])
            for p in self.everything()
        )


def _environment(config: ClusterConfig, ports: Mapping[str, Sequence[int]]) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": config.dsn,
        "MEMBEROPS_AUTH_TOKENS": f"{config.token}={config.tenant_id}",
        "TEMPORAL_ADDRESS": config.temporal_address,
        "MEMBEROPS_TASK_QUEUE": config.task_queue,
        "MEMBEROPS_LOG_LEVEL": "warning",
        "MEMBEROPS_DB_POOL_MIN": "1",
        "MEMBEROPS_DB_POOL_MAX": str(POOL_MAX),
        "MEMBEROPS_SHUTDOWN_GRACE_SECONDS": "0",
        **config.channels,
    }
    for service in SERVICES:
        env[f"MEMBEROPS_{service.upper()}_ADDRESS"] = target(ports[service])
    for name in ("MEMBEROPS_METRICS_ADDRESS", "DATABASE_READ_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        env.pop(name, None)
    return env


def _spawn(
    name: str, module: str, env: Mapping[str, str], logs: Path, port: int = 0, metrics_port: int = 0
) -> Process:
    log = logs / f"{name}.log"
    if metrics_port:
        env = {**env, "MEMBEROPS_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}"}
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", module], cwd=REPO_ROOT, env=dict(env), stdout=out, stderr=out
        )
    return Process(name, popen, port, log, metrics_port)


def _handled(metrics_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "grpc_server_handled_total"
            and sample.labels.get("grpc_service", "").startswith("memberops.")
        )
    )


async def handled(process: Process) -> int:
    """The MemberOps calls the replica has answered (its health checks left out), from its /metrics."""
    return await asyncio.to_thread(_handled, process.metrics_port)


async def serving(port: int) -> bool:
    """Whether the server on `port` answers its health check with SERVING."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = await health_stub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@contextmanager
def launched(config: ClusterConfig) -> Iterator[Cluster]:
    """Starts every replica (not waiting for them: see `ready`) and stops what still runs after."""
    picked = iter(free_ports(2 * REPLICAS * len(SERVICES)))
    ports = {service: [next(picked) for _ in range(REPLICAS)] for service in SERVICES}
    cluster = Cluster(config, ports)
    env = _environment(config, ports)
    try:
        for service in SERVICES:
            cluster.services[service] = [
                _spawn(
                    f"{service}-{n}",
                    f"services.{service}.server",
                    # Each replica listens on its own address; its peers' stay the shared targets.
                    {**env, f"MEMBEROPS_{service.upper()}_ADDRESS": f"127.0.0.1:{port}"},
                    config.logs,
                    port,
                    next(picked),
                )
                for n, port in enumerate(ports[service])
            ]
        cluster.workers = [
            _spawn(f"worker-{n}", "workflows.worker", env, config.logs) for n in range(REPLICAS)
        ]
        yield cluster
    finally:
        for process in cluster.everything():
            if process.alive():
                process.popen.terminate()
        for process in cluster.everything():
            try:
                process.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


async def ready(cluster: Cluster) -> None:
    """Until every service replica serves (workers show themselves by the work they take)."""
    for replicas in cluster.services.values():
        for process in replicas:

            async def up(process: Process = process) -> bool:
                if not process.alive():
                    raise AssertionError(f"{process.name} exited:\n{cluster.output()}")
                return await serving(process.port)

            await eventually(up, f"{process.name} served")
