"""Servers for benchmarks: an embedded PostgreSQL and services in processes of their own.

A service under load runs in its own process so the load generator does not share its GIL.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from deploy import localpg
from deploy.devstack import ROOT, grpc_health

BENCH_TOKEN = "bench-token-0123456789abcdef"
BENCH_TENANT = "bench"
AUTH = (("authorization", f"Bearer {BENCH_TOKEN}"),)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def postgres() -> AsyncIterator[str]:
    with tempfile.TemporaryDirectory(prefix="memberops-bench-") as tmp:
        pgdata = Path(tmp) / "pgdata"
        dsn = localpg.start(pgdata, durable=False)
        try:
            yield dsn
        finally:
            localpg.stop(pgdata)


@asynccontextmanager
async def service(name: str, dsn: str, extra_env: Mapping[str, str] | None = None) -> AsyncIterator[str]:
    """Runs `services.<name>.server` on a free port with access logs off; yields its address."""
    address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "MEMBEROPS_AUTH_TOKENS": f"{BENCH_TOKEN}={BENCH_TENANT}",
        f"MEMBEROPS_{name.upper()}_ADDRESS": address,
        "MEMBEROPS_LOG_LEVEL": "warning",
        "MEMBEROPS_SHUTDOWN_GRACE_SECONDS": "0",
        **(extra_env or {}),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"services.{name}.server", cwd=ROOT, env=env
    )
    try:
        deadline = time.monotonic() + 60
        while not (await grpc_health(address)).ready:
            if process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start (exit code {process.returncode})")
            await asyncio.sleep(0.2)
        yield address
    finally:
        if process.returncode is None:
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=30)
        except TimeoutError:
            process.kill()
            await process.wait()
