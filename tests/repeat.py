"""Runs the whole suite N times in a row, as a new user runs it (`make test`), and prints a tally.

A flaky test shows up only over many runs, so "green" means N consecutive green runs:

    .venv/bin/python -m tests.repeat            # 10 runs of `make test`
    .venv/bin/python -m tests.repeat 3 --log-dir /tmp/runs

Each run's output goes to its own log file; the tally gives every run's exit code, wall time and
pytest's closing line, and the command exits non-zero if any run failed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_SUMMARY = re.compile(r"^=+ (.*\d+ (passed|failed).*) =+$")


@dataclass(frozen=True)
class Run:
    number: int
    returncode: int
    seconds: float
    summary: str
    log: Path


def run_once(number: int, log_dir: Path, command: list[str]) -> Run:
    log = log_dir / f"run-{number:02d}.log"
    started = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds = time.monotonic() - started
    return Run(number, done.returncode, seconds, _summary(log), log)


def _summary(log: Path) -> str:
    """pytest's closing line (`652 passed in 139.99s`), or what the run ended with instead."""
    lines = log.read_text(errors="replace").splitlines()
    for line in reversed(lines):
        match = _SUMMARY.match(line.strip())
        if match:
            return match[1]
    return lines[-1].strip() if lines else "(no output)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("runs", type=int, nargs="?", default=10)
    parser.add_argument("--log-dir", type=Path, default=None)
    parser.add_argument("--command", default="make test", help="what one run is (default: make test)")
    args = parser.parse_args(argv)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="memberops-repeat-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    for number in range(1, args.runs + 1):
        run = run_once(number, log_dir, args.command.split())
        runs.append(run)
        verdict = "green" if run.returncode == 0 else f"RED (exit {run.returncode})"
        print(f"run {number:2d}/{args.runs}  {verdict:<14} {run.seconds:7.1f} s  {run.summary}", flush=True)
    green = sum(1 for run in runs if run.returncode == 0)
    times = sorted(run.seconds for run in runs)
    print(
        f"{green} of {len(runs)} runs green; wall time {times[0]:.0f}-{times[-1]:.0f} s "
        f"(median {times[len(times) // 2]:.0f} s); logs in {log_dir}"
    )
    return 0 if green == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
