"""Runs the image's entry point as a container would: `python -m deploy.cli <command>` in a process
of its own, with only the environment the test gives it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from deploy import health
from tests.conftest import REPO_ROOT
from tests.waiting import eventually

# Generous: a bound so that a hung command fails the test instead of hanging it.
COMMAND_TIMEOUT_SECONDS = 90.0


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str


def command_env(extra: Mapping[str, str]) -> dict[str, str]:
    """A clean environment (none of the shell's MemberOps or Temporal variables) plus `extra`."""
    return {"PATH": os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1", **extra}


async def start(command: str, extra: Mapping[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "deploy.cli",
        command,
        cwd=REPO_ROOT,
        env=command_env(extra),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(process: asyncio.subprocess.Process) -> Finished:
    stdout, stderr = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT_SECONDS)
    assert process.returncode is not None
    return Finished(process.returncode, stdout.decode(), stderr.decode())


async def run(command: str, extra: Mapping[str, str]) -> Finished:
    return await finish(await start(command, extra))


async def serve_then_stop(process: asyncio.subprocess.Process, target: str, what: str) -> Finished:
    """Waits until the started `process` answers the image's health probe at `target` (failing if
    it exits first), then stops it with SIGTERM as an orchestrator would, and returns how it ended."""
    try:

        async def serving() -> bool:
            healthy, _ = await asyncio.to_thread(health.check, target)
            return healthy or process.returncode is not None

        await eventually(serving, f"{what} answered its health check")
        assert process.returncode is None, f"{what} exited before it answered"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    return await finish(process)
