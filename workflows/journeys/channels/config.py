"""Channel configuration from environment variables, read once when the worker starts.

A channel without its address (no SMTP host, no provider URL) is not configured: sends fall back to
the next channel of the journey's order, and a step with no channel left is recorded as skipped.
WeCom is no channel of the process: each tenant switches it on with its WeCom connector
(channels/wecom.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from runtime import zones
from runtime.config import ConfigError, env_number
from workflows.journeys.definition import CHANNELS

HTTP_CHANNELS = ("sms", "app_push")
DEFAULT_PER_MINUTE = 600
ENV_PREFIX = {"sms": "SMS", "app_push": "PUSH", "wecom": "WECOM", "email": "EMAIL"}


@dataclass(frozen=True)
class SmtpSettings:
    host: str = ""
    port: int = 25
    sender: str = "memberops@localhost"
    starttls: bool = False
    username: str = ""
    password: str = field(default="", repr=False)


@dataclass(frozen=True)
class HttpProviderSettings:
    url: str = ""
    api_key: str = field(default="", repr=False)
    # The provider's batch endpoint (many messages per request, idempotent per message id), which
    # broadcasts use; without one they send one request per message.
    batch_url: str = ""


@dataclass(frozen=True)
class ChannelSettings:
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    providers: Mapping[str, HttpProviderSettings] = field(default_factory=dict)
    # Sends per channel per minute and tenant (the provider's quota, shared by the tenant's journeys).
    per_minute: Mapping[str, int] = field(default_factory=dict)
    timeout_seconds: float = 10.0
    # Zone of members whose contact data names none.
    default_time_zone: str = "Asia/Shanghai"

    def configured(self, channel: str) -> bool:
        if channel == "email":
            return bool(self.smtp.host)
        if channel not in HTTP_CHANNELS:
            return False
        return bool(self.providers.get(channel, HttpProviderSettings()).url)

    def rate(self, channel: str) -> int:
        return self.per_minute.get(channel, DEFAULT_PER_MINUTE)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ChannelSettings:
        env = os.environ if env is None else env
        smtp = SmtpSettings(
            host=env.get("MEMBEROPS_SMTP_HOST", ""),
            port=env_number(env, "MEMBEROPS_SMTP_PORT", 25, int),
            sender=env.get("MEMBEROPS_SMTP_FROM", SmtpSettings.sender),
            starttls=_flag(env, "MEMBEROPS_SMTP_STARTTLS"),
            username=env.get("MEMBEROPS_SMTP_USERNAME", ""),
            password=env.get("MEMBEROPS_SMTP_PASSWORD", ""),
        )
        providers = {
            channel: HttpProviderSettings(
                url=env.get(f"MEMBEROPS_{ENV_PREFIX[channel]}_URL", ""),
                api_key=env.get(f"MEMBEROPS_{ENV_PREFIX[channel]}_KEY", ""),
                batch_url=env.get(f"MEMBEROPS_{ENV_PREFIX[channel]}_BATCH_URL", ""),
            )
            for channel in HTTP_CHANNELS
        }
        per_minute = {
            channel: env_number(env, f"MEMBEROPS_{ENV_PREFIX[channel]}_PER_MINUTE", DEFAULT_PER_MINUTE, int)
            for channel in CHANNELS
        }
        return cls(
            smtp=smtp,
            providers=providers,
            per_minute=per_minute,
            timeout_seconds=env_number(env, "MEMBEROPS_SEND_TIMEOUT_SECONDS", 10.0, float),
            default_time_zone=_zone(env.get("MEMBEROPS_DEFAULT_TIME_ZONE", "Asia/Shanghai")),
        )


def _zone(name: str) -> str:
    if zones.find(name) is None:
        raise ConfigError(f"MEMBEROPS_DEFAULT_TIME_ZONE: {name!r} is not an IANA time zone")
    return name


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    return raw in ("true", "1")
