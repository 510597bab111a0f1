"""deploy/prometheus/alerts.yml, checked by `promtool check rules` and unit-tested by `promtool test
rules` (alerts_test.yml: each alert fires on the series it is about, after its `for`, and stays
quiet on healthy ones), each shown to reject a broken copy; and every series the rules read is one
MemberOps serves. promtool comes from Debian's prometheus package: `make test` unpacks it into
.venv/bin when it is not on the PATH. Without it these tests fail, never skip."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml  # type: ignore[import-untyped]

from tests.conftest import REPO_ROOT

PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
# Where the metrics are defined (names as the exposition shows them, less _bucket/_count/_sum).
DEFINITIONS = [
    REPO_ROOT / "runtime" / "metrics.py",
    REPO_ROOT / "runtime" / "grpc_metrics.py",
    REPO_ROOT / "services" / "journeys" / "anomaly_metrics.py",
]


def promtool() -> str:
    unpacked = Path(sys.executable).parent / "promtool"
    found = str(unpacked) if unpacked.exists() else shutil.which("promtool")
    assert found, (
        "promtool is missing: `make test` unpacks it from Debian's prometheus package into .venv/bin "
        "(`make .venv/bin/promtool`), or install the package (apt-get install prometheus)"
    )
    return found


def run(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_rules_are_valid() -> None:
    checked = run("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_the_rules_unit_tests_pass() -> None:
    tested = run("test", "rules", ALERTS_TEST.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_promtool_rejects_a_broken_rule_and_a_wrong_expectation(tmp_path: Path) -> None:
    broken = ALERTS.read_text().replace("> 60\n", "> > 60\n", 1)
    assert broken != ALERTS.read_text()
    (tmp_path / "alerts.yml").write_text(broken)
    assert run("check", "rules", str(tmp_path / "alerts.yml")).returncode != 0

    (tmp_path / "alerts.yml").write_text(ALERTS.read_text())
    wrong = ALERTS_TEST.read_text().replace('summary: "10% of sms sends fail (acme)"', 'summary: "9%"', 1)
    assert wrong != ALERTS_TEST.read_text()
    (tmp_path / "alerts_test.yml").write_text(wrong)
    assert run("test", "rules", "alerts_test.yml", cwd=tmp_path).returncode != 0


def test_every_series_the_rules_read_is_one_memberops_serves() -> None:
    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    read = {
        re.sub(r"_(bucket|count|sum)$", "", name)
        for rule in rules
        # Series names: not labels (grpc_code...), not recorded rules (names with colons).
        for name in re.findall(r"(?<![:\w])(memberops_[a-z_]+|grpc_server_[a-z_]+)\b", rule["expr"])
    }
    defined = "\n".join(path.read_text() for path in DEFINITIONS)
    assert read and sorted(name for name in read if f'"{name}"' not in defined) == []
