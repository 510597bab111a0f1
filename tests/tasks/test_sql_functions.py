"""The index of SQL functions in services/tasks/migrations/README.md names, for every function the
migrations define, the newest file that defines it (the version the database runs), the line
where that definition starts, and every earlier file that defined it."""

from __future__ import annotations

import re
from pathlib import Path

from runtime import migrations
from services.tasks.server import DEFINITION

CREATE = re.compile(r"^CREATE (?:OR REPLACE )?FUNCTION (?:tasks\.)?(\w+)\(", re.MULTILINE)
ROW = re.compile(r"^\| `tasks\.(\w+)` \| `(\d{4}_\w+\.sql)`, line (\d+) \| ([\d, ]*) \|", re.MULTILINE)


def folder() -> Path:
    assert DEFINITION.migrations_dir is not None
    return DEFINITION.migrations_dir


def definitions() -> dict[str, list[tuple[str, int]]]:
    """Per function, the (file, line) of each definition, oldest first."""
    found: dict[str, list[tuple[str, int]]] = {}
    for path in sorted(folder().glob("*.sql")):
        text = path.read_text()
        for match in CREATE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.setdefault(match[1], []).append((path.name, line))
    return found


def test_the_index_names_the_newest_definition_of_every_function() -> None:
    assert migrations.load(folder())  # the files the runner applies are the ones read here
    index = {
        name: ((file, int(line)), [int(n) for n in earlier.replace(",", " ").split()])
        for name, file, line, earlier in ROW.findall((folder() / "README.md").read_text())
    }
    expected = {
        name: (places[-1], [int(file[:4]) for file, _ in places[:-1]])
        for name, places in definitions().items()
    }
    assert expected, "the migrations define no function: the pattern no longer matches them"
    assert index == expected
