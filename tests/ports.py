"""Free ports for servers a test starts in another process, chosen where no outgoing connection can
take them first.

Binding port 0 gives a port from the kernel's ephemeral range, the range every outgoing connection
also takes its local port from. A port chosen that way and bound seconds later by a server the test
starts is up for grabs in between: the stack's own connections (Temporal's dev server opens
hundreds) took one once, and `make up`'s test found its journeys port in use. Ports below that
range are never handed out to connections, so they are picked there, at random (tests running at
once rarely meet), and checked free by binding them. A port is handed out once per process: one
test's many servers drawn port by port met on one port about once in 150 stack starts.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Below the ephemeral range, above the ports services conventionally use.
_LOWEST = 10_000
# Every port this process has handed out: a server may not have bound it yet.
_GIVEN: set[int] = set()


def _ephemeral_start() -> int:
    try:
        return int(_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def free_ports(count: int) -> list[int]:
    """`count` distinct ports below the ephemeral range that nothing is bound to now."""
    top = _ephemeral_start()
    if top - _LOWEST < 1_000:
        raise RuntimeError(f"the ephemeral range starts at {top}: no room below it for test ports")
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randrange(_LOWEST, top)
        if port in chosen or port in _GIVEN:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
    _GIVEN.update(chosen)
    return chosen


def free_port() -> int:
    return free_ports(1)[0]
