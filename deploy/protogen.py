"""Generates Python code, gRPC stubs and mypy stubs from protos/ (`make proto`).

The generated tree is committed under gen/ so that a checkout imports without a build step;
`tests/test_protos.py` regenerates into a temporary folder and fails when gen/ is stale.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
GEN_ROOT = ROOT / "gen"
OWN_PACKAGE = "memberops"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / OWN_PACKAGE).rglob("*.proto"))


def generate(out: Path) -> None:
    """Writes the generated modules for every .proto under protos/memberops into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    plugins = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={plugins / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugins / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    package_dirs = {p.parent for p in out.joinpath(OWN_PACKAGE).rglob("*.py")}
    for directory in package_dirs | {d for p in package_dirs for d in p.parents if out in d.parents}:
        (directory / "__init__.py").touch()


def generated_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.joinpath(OWN_PACKAGE).rglob("*"))
        if p.is_file() and p.suffix in {".py", ".pyi"}
    }


def stale_files() -> list[str]:
    """Names the files under gen/ that differ from a fresh generation (missing, extra or changed)."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = generated_files(Path(tmp))
    current = generated_files(GEN_ROOT)
    return sorted(name for name in fresh.keys() | current.keys() if fresh.get(name) != current.get(name))


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "gen"
    if command == "gen":
        shutil.rmtree(GEN_ROOT / OWN_PACKAGE, ignore_errors=True)
        generate(GEN_ROOT)
        print(f"generated {len(generated_files(GEN_ROOT))} files under {GEN_ROOT.relative_to(ROOT)}/")
        return 0
    if command == "check":
        stale = stale_files()
        for name in stale:
            print(f"stale: gen/{name}")
        return 1 if stale else 0
    print(f"usage: {argv[0]} gen|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
