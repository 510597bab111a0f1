"""`python -m deploy.health <target>`: the image's own health probe, for compose health checks.

The image carries no grpc_health_probe binary or curl; this asks what an orchestrator would:
`host:port` (or `unix:path`) gets the standard gRPC health check of the whole server (service ""),
an `http://` URL a GET (the worker's `/healthz` beside its `/metrics`). Exit 0 when it answers
SERVING or 200, 1 otherwise, with one line saying what it saw. Kubernetes needs none of this: it
probes gRPC and HTTP itself.
"""

from __future__ import annotations

import sys
import urllib.request
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_SECONDS = 3.0


def check_grpc(target: str, timeout: float = TIMEOUT_SECONDS) -> tuple[bool, str]:
    try:
        with grpc.insecure_channel(target) as channel:
            # The health stubs' type hints describe the asynchronous stub only; this one is blocking.
            stub: Any = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    except grpc.RpcError as error:
        return False, f"health check failed: {error.code().name}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def check_http(url: str, timeout: float = TIMEOUT_SECONDS) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status == 200, f"HTTP {reply.status}"
    except OSError as error:
        return False, f"no answer: {error}"


def check(target: str) -> tuple[bool, str]:
    return check_http(target) if target.startswith(("http://", "https://")) else check_grpc(target)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} host:port | unix:path | http://host:port/path", file=sys.stderr)
        return 2
    healthy, detail = check(argv[1])
    print(f"{argv[1]}: {detail}")
    return 0 if healthy else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
