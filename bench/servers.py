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
# Read by bench/clocked.py in the service's process.
CLOCK_ENV = "MEMBEROPS_BENCH_CLOCK"
CLOCKED_SERVICES = ("tagging", "audience")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def postgres(*, durable: bool = False) -> AsyncIterator[str]:
    """A throw-away cluster; fsync and synchronous commit off unless `durable`."""
    with tempfile.TemporaryDirectory(prefix="memberops-bench-") as tmp:
        pgdata = Path(tmp) / "pgdata"
        dsn = localpg.start(pgdata, durable=durable)
        try:
            yield dsn
        finally:
            localpg.stop(pgdata)


@asynccontextmanager
async def service(
    name: str,
    dsn: str,
    extra_env: Mapping[str, str] | None = None,
    *,
    clock: str | None = None,
    log: Path | None = None,
) -> AsyncIterator[str]:
    """Runs `services.<name>.server` on a free port with access logs off; yields its address.

    `clock` (tagging and audience) sets the service's clock: `frozen:<ISO time>` or
    `from:<ISO time>` (see bench/clocked.py); unset, the service runs on the wall clock. `log`: the
    service's output goes to that file instead of this process's.
    """
    if clock is not None and name not in CLOCKED_SERVICES:
        raise ValueError(f"only {', '.join(CLOCKED_SERVICES)} run with a bench clock")
    address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "MEMBEROPS_AUTH_TOKENS": f"{BENCH_TOKEN}={BENCH_TENANT}",
        f"MEMBEROPS_{name.upper()}_ADDRESS": address,
        "MEMBEROPS_LOG_LEVEL": "warning",
        "MEMBEROPS_SHUTDOWN_GRACE_SECONDS": "0",
        **(extra_env or {}),
        **({CLOCK_ENV: clock} if clock is not None else {}),
    }
    command = ("bench.clocked", name) if clock is not None else (f"services.{name}.server",)
    output = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND) if log is not None else None
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", *command, cwd=ROOT, env=env, stdout=output, stderr=output
    )
    try:
        deadline = time.monotonic() + 120  # seeding the catalog may take a moment on big data
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
        if output is not None:
            os.close(output)
