"""`make up` / `make status` / `make down` for real, on free ports and a run folder of its own."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from memberops.journeys.v1 import journey_pb2

from console import session as console_session
from deploy import devstack as devstack_module
from deploy import wecom_dev
from tests.conftest import REPO_ROOT
from tests.ports import free_ports

# The scheduled jobs `make up` creates per tenant.
JOBS = ("recompute_tags", "expire_points", "evaluate_levels", "grant_level_benefits", "detect_anomalies")

COMPONENTS = (
    "postgres",
    "temporal",
    "tagging",
    "audience",
    "tasks",
    "journeys",
    "outbox",
    "worker",
    "console",
)


def devstack(command: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "deploy.devstack", command],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"devstack {command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def recorded_pids(run_dir: Path) -> list[int]:
    """Every process the stack recorded: the components' pid files and PostgreSQL's postmaster."""
    pids = [json.loads(f.read_text())["pid"] for f in run_dir.glob("*.pid")]
    pids.append(int((run_dir / "pgdata" / "postmaster.pid").read_text().split()[0]))
    return pids


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        text: str = answer.read().decode()
        return text


def check_console(started: str, console: str) -> None:
    """The console is up at its URL and serves the demo member, read from the services with the
    dev token (as a signed-in operator's cookie holds it)."""
    assert f"console       {console}  (sign in with the token below)" in started
    cookie = f"{console_session.SESSION_COOKIE}={devstack_module.DEV_TOKEN}"
    request = urllib.request.Request(f"{console}/members/demo-1", headers={"Cookie": cookie})
    with urllib.request.urlopen(request, timeout=10) as answer:
        member = answer.read().decode()
    assert "Xiao Li" in member and "categories_bought=tea" in member


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def stack_env(run_dir: Path, *, wecom: bool = False) -> tuple[dict[str, str], dict[str, int]]:
    """An environment for a stack of its own: the run folder, and free ports for every part (no
    MEMBEROPS_, DATABASE_URL or TEMPORAL_ variable of the caller's); and the metrics ports. The
    ports are drawn together, so they differ (drawn one by one, two parts of one stack got the
    same port in about one start in 150, and `up` failed on it); `wecom` adds the local WeCom's."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MEMBEROPS_", "DATABASE_URL", "TEMPORAL_"))
    }
    ports = iter(free_ports(8 + len(devstack_module.METRICS_PROCESSES) + (2 if wecom else 0)))
    env.update(
        MEMBEROPS_RUN_DIR=str(run_dir),
        MEMBEROPS_TEMPORAL_PORT=str(next(ports)),
        MEMBEROPS_TEMPORAL_UI_PORT=str(next(ports)),
        MEMBEROPS_TAGGING_ADDRESS=f"127.0.0.1:{next(ports)}",
        MEMBEROPS_AUDIENCE_ADDRESS=f"127.0.0.1:{next(ports)}",
        MEMBEROPS_TASKS_ADDRESS=f"127.0.0.1:{next(ports)}",
        MEMBEROPS_JOURNEYS_ADDRESS=f"127.0.0.1:{next(ports)}",
        MEMBEROPS_OUTBOX_PORT=str(next(ports)),
        MEMBEROPS_CONSOLE_ADDRESS=f"127.0.0.1:{next(ports)}",
    )
    metrics = {name: next(ports) for name in devstack_module.METRICS_PROCESSES}
    env.update({f"MEMBEROPS_{name.upper()}_METRICS_PORT": str(port) for name, port in metrics.items()})
    if wecom:
        env.update(
            MEMBEROPS_DEV_WECOM="1",
            MEMBEROPS_DEV_WECOM_PORT=str(next(ports)),
            MEMBEROPS_WECOM_CALLBACK_ADDRESS=f"127.0.0.1:{next(ports)}",
        )
    return env, metrics


def test_up_status_down(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env, metrics = stack_env(run_dir)
    try:
        started = devstack("up", env)
        assert "MemberOps is up." in started
        for name, port in metrics.items():
            assert f"{name:<9} http://127.0.0.1:{port}/metrics" in started
        # Every process serves its metrics; the worker the Temporal SDK's too, and its liveness.
        scraped = {name: scrape(f"http://127.0.0.1:{port}/metrics") for name, port in metrics.items()}
        assert 'grpc_server_handled_total{grpc_code="OK",grpc_method="RecordOrder"' in scraped["tagging"]
        assert "memberops_db_pool_connections_max" in scraped["tasks"]
        assert "temporal_" in scraped["worker"] and "memberops_db_pool_connections" in scraped["worker"]
        assert scrape(f"http://127.0.0.1:{metrics['worker']}/healthz") == "ok\n"
        assert "MemberSummary(member_id='demo-1', found=True, city='Hangzhou'" in started
        # The order's real-time tags were visible right after RecordOrder returned.
        assert "categories_bought=tea" in started and "lifecycle=new" in started
        for name in COMPONENTS:
            assert f"{name:<10} started" in started
        assert started.count("health SERVING") == 4
        for job in JOBS:
            assert f"schedule   created          periodic/dev/{job}" in started
        # One journey dispatcher per tenant, and the demo member's first order enrolled them.
        assert (
            "dispatcher started          dispatcher/dev  (following the feeds, created audience win-back)"
            in started
        )
        # The shipped triggered journeys went live through ActivateJourney, for the dev tenant only.
        assert "journey    activated        journeys/new-customer version 1  (tenant dev)" in started
        assert "journey    activated        journeys/win-back version 1  (tenant dev)" in started
        assert "elsewhere shipped journeys are drafts until activated" in started
        enrolled = "enrolled demo-1 on their first order: journey/dev/new-customer/member/demo-1: active"
        assert enrolled in started

        check_console(started, f"http://{env['MEMBEROPS_CONSOLE_ADDRESS']}")

        again = devstack("up", env)
        for name in COMPONENTS:
            assert f"{name:<10} already running" in again
        assert "journey    already active   journeys/new-customer version 1" in again
        assert again.count("schedule   updated") == len(JOBS)
        assert "dispatcher already running  dispatcher/dev  (following the feeds)" in again

        with urllib.request.urlopen(f"http://127.0.0.1:{env['MEMBEROPS_TEMPORAL_UI_PORT']}", timeout=5) as ui:
            assert ui.status == 200
            assert b"<html" in ui.read().lower()

        status = devstack("status", env)
        assert "stopped" not in status
        assert status.count("running") == 9
        assert status.count("health SERVING") == 4
        assert "polling task queue memberops" in status
        assert 'taken {"requests": ' in status  # the local outbox, the worker's SMS/push/WeCom provider
        pids = recorded_pids(run_dir)
        assert len(pids) == 9 and all(alive(pid) for pid in pids)
    finally:
        stopped = devstack("down", env)
    assert "postgres   stopped" in stopped
    assert [pid for pid in pids if alive(pid)] == []
    assert "running" not in devstack("status", env)


@pytest.mark.parametrize(
    ("state", "live", "latest", "scaled", "expected"),
    [
        (journey_pb2.JOURNEY_STATE_DRAFT, 0, 1, False, 1),  # never activated: the latest goes live
        (journey_pb2.JOURNEY_STATE_DRAFT, 0, 3, True, 3),
        (journey_pb2.JOURNEY_STATE_ACTIVE, 1, 1, False, 0),  # already live
        (journey_pb2.JOURNEY_STATE_ACTIVE, 1, 2, False, 0),  # an operator's newer draft version waits
        (journey_pb2.JOURNEY_STATE_ACTIVE, 1, 2, True, 2),  # the worker stored it at the new scale
        (journey_pb2.JOURNEY_STATE_PAUSED, 1, 2, True, 0),  # the operator's pause holds
        (journey_pb2.JOURNEY_STATE_ARCHIVED, 1, 2, True, 0),
    ],
)
def test_make_up_activates_only_what_nobody_decided(
    state: journey_pb2.JourneyState.ValueType, live: int, latest: int, scaled: bool, expected: int
) -> None:
    journey = journey_pb2.Journey(
        name="journeys/new-customer", state=state, live_version=live, latest_version=latest
    )
    assert devstack_module.version_to_activate(journey, scaled=scaled) == expected


def test_up_with_the_local_wecom(tmp_path: Path) -> None:
    """MEMBEROPS_DEV_WECOM=1: the local WeCom runs beside the stack, the demo member's tags appear
    on the customer there, and a tag a staff member sets there comes back as a manual tag."""
    env, _ = stack_env(tmp_path / "run", wecom=True)
    try:
        before = dt.datetime.now(dt.UTC)
        started = devstack("up", env)
        after = dt.datetime.now(dt.UTC)
        assert f"{'wecom':<10} started" in started
        shown = started[started.index("WeCom (local):") :]
        assert "on the customer in WeCom: Categories bought/tea, Lifecycle stage/new" in shown
        assert "a staff member's tag came back: staff_label=vip_care (set by zhangsan, reason wecom)" in shown
        # The demo member's welcome went out through WeCom, from the staff member who owns them,
        # unless the journey's quiet hours held it (the run is then in the same step, holding).
        treated = "journey/dev/new-customer/member/demo-1: active, arm treated" in started
        if treated and not (wecom_dev.quiet_now(before) or wecom_dev.quiet_now(after)):
            assert "the journey through WeCom: zhangsan -> wmdemo1customer: 'Hi Xiao Li, thank you" in shown
        else:
            assert "the journey through WeCom: " in shown
    finally:
        devstack("down", env)
