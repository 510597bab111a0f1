"""The image's commands: each name runs something that exists, a bad one says how to call it,
`migrate` brings a fresh database to every schema's latest version, a service bound through
MEMBEROPS_LISTEN_ADDRESS answers the health probe the compose file uses, and so does the console
on MEMBEROPS_CONSOLE_ADDRESS."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from console import __main__ as console_main
from deploy import cli, health, migrate
from runtime import app, migrations
from runtime.config import ConfigError, Settings
from tests.conftest import TOKEN_ACME, unique
from tests.deploy import commands
from tests.ports import free_port

SERVICES = ("tagging", "audience", "tasks", "journeys")


def test_every_command_names_something_that_exists() -> None:
    assert set(cli.COMMANDS) == {*SERVICES, "worker", "console", "dispatcher", "migrate", "setup"}
    for name, command in cli.COMMANDS.items():
        target = command.load()
        if command.service:
            assert isinstance(target, app.ServiceDefinition)
            assert target.name == name
        else:
            assert callable(target), name
    # `python -m console`, the same function `make up` runs.
    assert cli.COMMANDS["console"].load() is console_main.main
    assert not cli.COMMANDS["console"].service


@pytest.mark.parametrize("argv", [[], ["nope"], ["worker", "extra"]])
def test_a_bad_command_prints_the_usage_and_exits_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["deploy.cli", *argv]) == 2
    err = capsys.readouterr().err
    assert "usage: python -m deploy.cli <command>" in err
    assert all(name in err for name in cli.COMMANDS)


async def test_the_module_entry_point_exits_2_on_a_bad_command() -> None:
    finished = await commands.run("nope", {})
    assert finished.returncode == 2
    assert "unknown command 'nope'" in finished.stderr


async def test_a_missing_setting_is_named_not_a_traceback() -> None:
    finished = await commands.run("migrate", {})
    assert finished.returncode == 1
    assert finished.stderr.startswith("error: DATABASE_URL is not set"), finished.stderr
    assert "Traceback" not in finished.stderr


def test_the_listen_address_binds_the_service_and_peers_keep_theirs() -> None:
    definition = cli.COMMANDS["tagging"].load()
    settings = Settings(tagging_address="tagging:50051")
    bound = cli.listening(definition, {cli.LISTEN_ENV: "0.0.0.0:50051"})
    assert bound.address(settings) == "0.0.0.0:50051"
    assert settings.tagging_address == "tagging:50051"
    assert cli.listening(definition, {}).address(settings) == "tagging:50051"
    with pytest.raises(ConfigError, match=cli.LISTEN_ENV):
        cli.listening(definition, {cli.LISTEN_ENV: "0.0.0.0"})


def database_url(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="module")
async def fresh_database(pg_dsn: str) -> AsyncIterator[str]:
    """A database of this module's own in the suite's cluster: nothing migrated yet."""
    name = unique("deploy").replace("-", "_")
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
        yield database_url(pg_dsn, name)
        await conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await conn.close()


def test_migrate_covers_every_service_schema_and_the_workers() -> None:
    found = dict(migrate.schemas())
    assert set(found) == {definition.schema for definition in _definitions()}
    for definition in _definitions():
        assert definition.migrations_dir is not None
        assert found[definition.schema or ""] == definition.migrations_dir.resolve()


def _definitions() -> list[app.ServiceDefinition]:
    return [cli.COMMANDS[name].load() for name in SERVICES]


async def test_migrate_brings_a_fresh_database_up_to_date_and_a_second_run_applies_nothing(
    fresh_database: str,
) -> None:
    finished = await commands.run("migrate", {"DATABASE_URL": fresh_database})
    assert finished.returncode == 0, finished.stderr
    conn = await asyncpg.connect(fresh_database)
    try:
        for schema, directory in migrate.schemas():
            applied = await conn.fetch(f"SELECT version FROM {schema}.schema_migrations ORDER BY 1")
            expected = [migration.version for migration in migrations.load(directory)]
            assert [row["version"] for row in applied] == expected, schema
            assert f"{schema:<10} applied " in finished.stdout
    finally:
        await conn.close()
    assert all(versions == [] for _, versions in await migrate.migrate_all(fresh_database))


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Short on purpose: a Unix socket path must stay under 108 bytes.
    with tempfile.TemporaryDirectory(prefix="mo-") as folder:
        yield Path(folder)


async def test_a_service_listens_where_the_listen_address_says_and_answers_the_probe(
    fresh_database: str, socket_dir: Path
) -> None:
    listen = f"unix:{socket_dir}/audience.sock"
    assert health.main(["deploy.health", listen]) == 1  # nothing there yet
    process = await commands.start(
        "audience",
        {
            "DATABASE_URL": fresh_database,
            "MEMBEROPS_AUTH_TOKENS": f"{TOKEN_ACME}=acme",
            cli.LISTEN_ENV: listen,
            # Where peers would find it: not bound by the service itself.
            "MEMBEROPS_AUDIENCE_ADDRESS": "audience.invalid:50052",
        },
    )
    finished = await commands.serve_then_stop(process, listen, "the audience service")
    assert finished.returncode == 0, finished.stderr


def test_the_probe_wants_one_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert health.main(["deploy.health"]) == 2
    assert "usage:" in capsys.readouterr().err


async def test_a_bad_console_address_is_named_not_a_traceback() -> None:
    finished = await commands.run("console", {console_main.ADDRESS_ENV: "8088"})
    assert finished.returncode == 1
    assert finished.stderr.startswith(f"error: {console_main.ADDRESS_ENV} must be host:port"), finished.stderr
    assert "Traceback" not in finished.stderr


async def test_the_console_serves_its_health_check_where_its_address_says_and_stops_on_sigterm() -> None:
    """What the compose health check and the Kubernetes probes ask: GET /healthz on the console's
    address, answered with no database and its services not running (pages report those)."""
    url = f"http://127.0.0.1:{free_port()}/healthz"
    nowhere = f"127.0.0.1:{free_port()}"
    assert health.main(["deploy.health", url]) == 1  # nothing there yet
    process = await commands.start(
        "console",
        {
            console_main.ADDRESS_ENV: url.removeprefix("http://").removesuffix("/healthz"),
            "MEMBEROPS_TAGGING_ADDRESS": nowhere,
            "MEMBEROPS_TASKS_ADDRESS": nowhere,
            "MEMBEROPS_JOURNEYS_ADDRESS": nowhere,
        },
    )
    finished = await commands.serve_then_stop(process, url, "the console")
    assert finished.returncode == 0, finished.stderr
