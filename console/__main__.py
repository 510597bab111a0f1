"""`python -m console`: serves the console on MEMBEROPS_CONSOLE_ADDRESS (default 127.0.0.1:8088),
a client of the services found at their usual addresses (MEMBEROPS_TAGGING_ADDRESS and friends)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from aiohttp import web

from console import app
from console.clients import Peers
from runtime import logs
from runtime.config import ConfigError, Settings

ADDRESS_ENV = "MEMBEROPS_CONSOLE_ADDRESS"
DEFAULT_ADDRESS = "127.0.0.1:8088"
SECURE_ENV = "MEMBEROPS_CONSOLE_SECURE"


def address(env: Mapping[str, str]) -> tuple[str, int]:
    raw = env.get(ADDRESS_ENV, "").strip() or DEFAULT_ADDRESS
    host, _, port = raw.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{ADDRESS_ENV} must be host:port (e.g. 127.0.0.1:8088), got {raw!r}")
    return host.strip("[]"), int(port)


def main() -> int:
    env = os.environ
    try:
        settings = Settings.from_env(env)
        host, port = address(env)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    logs.configure(settings.log_level, service="console")
    console = app.build(
        Peers.from_settings(settings), secure_cookies=env.get(SECURE_ENV, "") in ("1", "true")
    )
    web.run_app(
        console,
        host=host,
        port=port,
        print=None,
        access_log=None,
        shutdown_timeout=settings.shutdown_grace_seconds,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
