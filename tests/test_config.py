"""Configuration from the environment: defaults, token parsing, clear errors."""

from __future__ import annotations

import pytest

from runtime.config import ConfigError, Settings, parse_tokens


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings.tagging_address == "127.0.0.1:50051"
    assert settings.temporal_address == "127.0.0.1:7233"
    assert settings.auth_tokens == {}
    assert settings.membership_index_limit == 5_000_000


def test_reads_tokens_and_addresses() -> None:
    settings = Settings.from_env(
        {
            "MEMBEROPS_AUTH_TOKENS": "token-for-acme-000001=acme, token-for-globex-0002=globex",
            "MEMBEROPS_TAGGING_ADDRESS": "0.0.0.0:9000",
            "MEMBEROPS_DB_POOL_MAX": "32",
            "MEMBEROPS_MEMBERSHIP_INDEX_LIMIT": "0",
        }
    )
    assert settings.auth_tokens == {"token-for-acme-000001": "acme", "token-for-globex-0002": "globex"}
    assert settings.tagging_address == "0.0.0.0:9000"
    assert settings.db_pool_max == 32
    assert settings.membership_index_limit == 0
    assert settings.token_for_tenant("globex") == "token-for-globex-0002"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("no-equals-sign-token", "token=tenant"),
        ("short=acme", "at least 16"),
        ("a-long-enough-token-1=Bad Tenant", "must match"),
        ("a-long-enough-token-1=", "token=tenant"),
    ],
)
def test_bad_tokens_are_refused_naming_the_variable(raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match="MEMBEROPS_AUTH_TOKENS") as caught:
        parse_tokens(raw)
    assert message in str(caught.value)


def test_missing_required_settings_name_the_variable() -> None:
    settings = Settings.from_env({})
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        settings.require_database()
    with pytest.raises(ConfigError, match="MEMBEROPS_AUTH_TOKENS"):
        settings.require_tokens()
    with pytest.raises(ConfigError, match="MEMBEROPS_DB_POOL_MAX"):
        Settings.from_env({"MEMBEROPS_DB_POOL_MAX": "many"})
    with pytest.raises(ConfigError, match="MEMBEROPS_SHUTDOWN_GRACE_SECONDS"):
        Settings.from_env({"MEMBEROPS_SHUTDOWN_GRACE_SECONDS": "-1"})


def test_audience_bitmaps_are_on_unless_switched_off() -> None:
    assert Settings.from_env({}).audience_bitmaps
    assert not Settings.from_env({"MEMBEROPS_AUDIENCE_BITMAPS": "off"}).audience_bitmaps
    assert Settings.from_env({"MEMBEROPS_AUDIENCE_BITMAPS": "1"}).audience_bitmaps
    with pytest.raises(ConfigError, match="MEMBEROPS_AUDIENCE_BITMAPS"):
        Settings.from_env({"MEMBEROPS_AUDIENCE_BITMAPS": "maybe"})
