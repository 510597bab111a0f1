"""The README's journey walk-through, read from README.md itself, so the tests send what a reader
runs: the shell block of the section "A journey: ..." (a definition written to a file, then one
`buf curl` per call), and each call's RPC and JSON body parsed out of it."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.conftest import REPO_ROOT

KEY = "welcome-back"
SERVICE = "memberops.journeys.v1.JourneyService"
_FILE = "welcome-back.json"
_CALL = re.compile(r"""^\$BUF -H "\$AUTH" -d (?P<body>"(?:[^"\\]|\\.)*"|'[^']*') \$J/(?P<rpc>\w+)""")


def script() -> str:
    """The section's first shell block, as written in the README."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index("## A journey: ") :]
    section = section[: section.index("\n## ", 1)]
    return section.split("```sh\n", 1)[1].split("\n```", 1)[0]


def definition_text(block: str) -> str:
    """What the block's here-document writes to welcome-back.json."""
    return block.split(f"cat > {_FILE} <<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]


def _body(quoted: str, file_text: str) -> dict[str, Any]:
    """The JSON the shell passes for a `-d` argument: single quotes literal; double quotes with
    `\\"` unescaped and `$(cat welcome-back.json)` replaced by the file."""
    inner = quoted[1:-1]
    if quoted.startswith('"'):
        parts = [part.replace('\\"', '"') for part in inner.split(f"$(cat {_FILE})")]
        inner = file_text.join(parts)
    body: dict[str, Any] = json.loads(inner)
    return body


def calls(key: str = KEY) -> list[tuple[str, dict[str, Any]]]:
    """(RPC, body) of each call in the README's order, for a journey keyed `key` (tests need a key
    of their own)."""
    block = script()
    file_text = definition_text(block)
    found = []
    for line in block.splitlines():
        match = _CALL.match(line)
        if match:
            found.append((match["rpc"], _body(match["body"], file_text)))
    return [(rpc, body) for rpc, body in json.loads(_own(json.dumps(found), key))]


def _own(text: str, key: str) -> str:
    """`text` for a journey keyed `key`: its key, resource name and request ids (a request id is
    the tenant's, so each test's must be its own)."""
    for name in (f'"{KEY}"', f"journeys/{KEY}"):
        text = text.replace(name, name.replace(KEY, key))
    return re.sub(r'(request_id\\?": \\?")([^"\\]+)', rf"\g<1>\g<2>-{key}", text)


def runnable(key: str, address: str, token: str) -> str:
    """The block as a reader runs it, against `address` with `token`, for a journey keyed `key`."""
    block = _own(script(), key)
    block = re.sub(r"^AUTH=.*$", f'AUTH="authorization: Bearer {token}"', block, flags=re.M)
    return re.sub(r"^J=http://[^/]+/", f"J=http://{address}/", block, flags=re.M)
