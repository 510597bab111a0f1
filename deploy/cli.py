"""The image's entry point: `python -m deploy.cli <command>` (see docs/deploying.md).

One image runs every MemberOps process; the command picks which. The four gRPC services listen on
MEMBEROPS_LISTEN_ADDRESS when it is set (a container binds `0.0.0.0:50051` while its peers find it
as `tagging:50051` through MEMBEROPS_TAGGING_ADDRESS), else on their own address as under
`make up`. `console` serves the operators' web console over HTTP on MEMBEROPS_CONSOLE_ADDRESS.
Targets are imported only for the command that runs, so `migrate` does not load the worker and a
service does not load the others.
"""

from __future__ import annotations

import atexit
import dataclasses
import importlib
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from runtime import app
from runtime.config import ConfigError

LISTEN_ENV = "MEMBEROPS_LISTEN_ADDRESS"


@dataclass(frozen=True)
class Command:
    # "module:attribute": a service's ServiceDefinition, or a function run with no arguments that
    # returns an exit status (None is 0).
    target: str
    summary: str
    service: bool = False

    def load(self) -> Any:
        module, _, attribute = self.target.partition(":")
        return getattr(importlib.import_module(module), attribute)


COMMANDS: Mapping[str, Command] = {
    "tagging": Command("services.tagging.server:DEFINITION", "the tagging gRPC service", service=True),
    "audience": Command("services.audience.server:DEFINITION", "the audience gRPC service", service=True),
    "tasks": Command("services.tasks.server:DEFINITION", "the tasks gRPC service", service=True),
    "journeys": Command("services.journeys.server:DEFINITION", "the journeys gRPC service", service=True),
    "worker": Command("workflows.worker:main", "the Temporal worker (every workflow and activity)"),
    "console": Command(
        "console.__main__:main", "the operators' web console (HTTP on MEMBEROPS_CONSOLE_ADDRESS)"
    ),
    "dispatcher": Command(
        "workflows.dispatcher.__main__:main",
        "starts each tenant's journey dispatcher and the shipped audiences, then exits",
    ),
    "migrate": Command("deploy.migrate:main", "applies every schema's migrations, then exits"),
    "setup": Command(
        "deploy.setup:main",
        "registers the search attributes and creates the periodic schedules, then exits",
    ),
}


def usage(program: str) -> str:
    lines = [f"usage: {program} <command>", "", "commands:"]
    lines += [f"  {name:<11} {command.summary}" for name, command in COMMANDS.items()]
    lines += ["", f"Services listen on {LISTEN_ENV} when set (e.g. 0.0.0.0:50051)."]
    return "\n".join(lines)


def listening(definition: app.ServiceDefinition, env: Mapping[str, str]) -> app.ServiceDefinition:
    """The service bound to MEMBEROPS_LISTEN_ADDRESS if set; its settings' address stays where its
    peers (and the worker) find it."""
    listen = env.get(LISTEN_ENV, "").strip()
    if not listen:
        return definition
    host, _, port = listen.rpartition(":")
    if not listen.startswith("unix:") and not (host and port.isdigit() and 0 < int(port) < 65536):
        raise ConfigError(f"{LISTEN_ENV} must be host:port (e.g. 0.0.0.0:50051), got {listen!r}")
    return dataclasses.replace(definition, address=lambda _settings: listen)


def run(command: Command, env: Mapping[str, str]) -> int:
    target = command.load()
    if command.service:
        app.main(listening(target, env))
        return 0
    function: Callable[[], int | None] = target
    return function() or 0


def main(argv: list[str]) -> int:
    program = "python -m deploy.cli"
    if len(argv) == 2 and argv[1] in ("-h", "--help", "help"):
        print(usage(program))
        return 0
    if len(argv) != 2 or argv[1] not in COMMANDS:
        given = f"unknown command {argv[1]!r}\n" if len(argv) == 2 else ""
        print(f"{given}{usage(program)}", file=sys.stderr)
        return 2
    try:
        return run(COMMANDS[argv[1]], os.environ)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def exit_now(status: int) -> NoReturn:
    """Ends the process without the interpreter's teardown, once the command's own shutdown is done.

    temporalio's client leaves Rust threads that may call into Python while the interpreter
    finalizes, which now and then aborts a process that has finished its work (SIGABRT or SIGSEGV
    after the output; temporalio/sdk-python#300; here 2 of 40 `setup` runs under load): a Job
    that did its work must not report a failure. Exit handlers (logging, the trace exporter's
    flush) still run first, and the standard streams are flushed."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    exit_now(main(sys.argv))
