"""The channel implementations for a configuration: SMTP for e-mail, the HTTP adapter for SMS and
app push. (WeCom is a tenant's channel: channels/wecom.py, built by the worker.)"""

from __future__ import annotations

from workflows.journeys.channels.base import Channel
from workflows.journeys.channels.config import HTTP_CHANNELS, ChannelSettings
from workflows.journeys.channels.provider import HttpBatchProviderChannel, HttpProviderChannel
from workflows.journeys.channels.smtp import SmtpChannel


def build(settings: ChannelSettings) -> dict[str, Channel]:
    """Every configured channel (an unconfigured one is absent, so sends fall back past it)."""
    built: dict[str, Channel] = {}
    if settings.configured("email"):
        built["email"] = SmtpChannel(settings.smtp, settings.timeout_seconds)
    for name in HTTP_CHANNELS:
        if settings.configured(name):
            provider = settings.providers[name]
            kind = HttpBatchProviderChannel if provider.batch_url else HttpProviderChannel
            built[name] = kind(provider, settings.timeout_seconds)
    return built
