"""Configuration from environment variables, read once at start-up.

Every variable has a default that suits `make up` except the ones a production deployment must
choose on purpose (the database and the tokens); those fail fast with a message naming the variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

_N = TypeVar("_N", int, float)

TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")


class ConfigError(ValueError):
    """A variable is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Settings:
    database_url: str = ""
    # bearer token -> tenant id
    auth_tokens: Mapping[str, str] = field(default_factory=dict)
    tagging_address: str = "127.0.0.1:50051"
    audience_address: str = "127.0.0.1:50052"
    tasks_address: str = "127.0.0.1:50053"
    journeys_address: str = "127.0.0.1:50054"
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_task_queue: str = "memberops"
    log_level: str = "info"
    db_pool_min: int = 2
    db_pool_max: int = 10
    shutdown_grace_seconds: float = 5.0
    # Dynamic-audience memberships the audience service holds in memory (~100 bytes each).
    membership_index_limit: int = 5_000_000
    # Tag and profile member sets held as bitmaps by the audience service (services/audience/
    # bitmaps.py): counts, checks and exports combine them; off evaluates everything in SQL.
    audience_bitmaps: bool = True
    # Where this process serves Prometheus' /metrics ("host:port"); empty serves none.
    metrics_address: str = ""
    # A read replica for reads that may lag a little (audience counts, checks, exports); empty
    # sends them to DATABASE_URL.
    database_read_url: str = ""
    # OpenTelemetry's OTLP/gRPC collector (e.g. http://otel-collector:4317); empty exports no traces.
    otlp_endpoint: str = ""
    # WeCom's API (the worker's sync and channel, the journeys service's checks); a local WeCom
    # server's URL in dev and tests.
    wecom_api_url: str = "https://qyapi.weixin.qq.com"
    # Where the journeys service takes WeCom's callbacks over HTTP ("host:port"); empty takes none.
    wecom_callback_address: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()
        return cls(
            database_url=env.get("DATABASE_URL", defaults.database_url),
            auth_tokens=parse_tokens(env.get("MEMBEROPS_AUTH_TOKENS", "")),
            tagging_address=env.get("MEMBEROPS_TAGGING_ADDRESS", defaults.tagging_address),
            audience_address=env.get("MEMBEROPS_AUDIENCE_ADDRESS", defaults.audience_address),
            tasks_address=env.get("MEMBEROPS_TASKS_ADDRESS", defaults.tasks_address),
            journeys_address=env.get("MEMBEROPS_JOURNEYS_ADDRESS", defaults.journeys_address),
            temporal_address=env.get("TEMPORAL_ADDRESS", defaults.temporal_address),
            temporal_namespace=env.get("TEMPORAL_NAMESPACE", defaults.temporal_namespace),
            temporal_task_queue=env.get("MEMBEROPS_TASK_QUEUE", defaults.temporal_task_queue),
            log_level=env.get("MEMBEROPS_LOG_LEVEL", defaults.log_level).lower(),
            db_pool_min=env_number(env, "MEMBEROPS_DB_POOL_MIN", defaults.db_pool_min, int),
            db_pool_max=env_number(env, "MEMBEROPS_DB_POOL_MAX", defaults.db_pool_max, int),
            shutdown_grace_seconds=env_number(
                env, "MEMBEROPS_SHUTDOWN_GRACE_SECONDS", defaults.shutdown_grace_seconds, float
            ),
            membership_index_limit=env_number(
                env, "MEMBEROPS_MEMBERSHIP_INDEX_LIMIT", defaults.membership_index_limit, int
            ),
            audience_bitmaps=env_flag(env, "MEMBEROPS_AUDIENCE_BITMAPS", defaults.audience_bitmaps),
            metrics_address=env.get("MEMBEROPS_METRICS_ADDRESS", defaults.metrics_address),
            database_read_url=env.get("DATABASE_READ_URL", defaults.database_read_url),
            otlp_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT", defaults.otlp_endpoint),
            wecom_api_url=env.get("MEMBEROPS_WECOM_API_URL", defaults.wecom_api_url).rstrip("/"),
            wecom_callback_address=env.get(
                "MEMBEROPS_WECOM_CALLBACK_ADDRESS", defaults.wecom_callback_address
            ),
        )

    def require_database(self) -> str:
        if not self.database_url:
            raise ConfigError("DATABASE_URL is not set (e.g. postgresql://user:pass@host/db)")
        return self.database_url

    def require_tokens(self) -> Mapping[str, str]:
        if not self.auth_tokens:
            raise ConfigError(
                "MEMBEROPS_AUTH_TOKENS is empty, so no caller could authenticate "
                "(format: token=tenant[,token=tenant...])"
            )
        return self.auth_tokens

    def token_for_tenant(self, tenant_id: str) -> str:
        """The bearer token the worker presents when it acts for `tenant_id`."""
        for token, tenant in self.auth_tokens.items():
            if tenant == tenant_id:
                return token
        raise ConfigError(f"MEMBEROPS_AUTH_TOKENS has no token for tenant {tenant_id!r}")


def parse_tokens(raw: str) -> dict[str, str]:
    """Parses `token=tenant,token=tenant`; tokens must be at least 16 characters."""
    tokens: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        token, sep, tenant = item.partition("=")
        if not sep or not token or not tenant:
            raise ConfigError("MEMBEROPS_AUTH_TOKENS: each entry must be token=tenant")
        if len(token) < 16:
            raise ConfigError("MEMBEROPS_AUTH_TOKENS: tokens must be at least 16 characters")
        if not TENANT_ID.match(tenant):
            raise ConfigError(f"MEMBEROPS_AUTH_TOKENS: tenant {tenant!r} must match {TENANT_ID.pattern}")
        tokens[token] = tenant
    return tokens


def env_number(env: Mapping[str, str], name: str, default: _N, kind: Callable[[str], _N]) -> _N:
    """The non-negative number in variable `name`, or `default` when it is unset."""
    raw = env.get(name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {raw!r}")
    return value


_FLAGS = {
    "1": True,
    "true": True,
    "on": True,
    "yes": True,
    "0": False,
    "false": False,
    "off": False,
    "no": False,
}


def env_flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """The on/off switch in variable `name` (1/0, true/false, on/off, yes/no), or `default` unset."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = _FLAGS.get(raw.strip().lower())
    if value is None:
        raise ConfigError(f"{name} must be on or off (1/0, true/false, yes/no), got {raw!r}")
    return value
