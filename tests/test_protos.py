"""The committed generated code under gen/ matches protos/."""

from __future__ import annotations

from deploy import protogen


def test_generated_code_is_fresh() -> None:
    stale = protogen.stale_files()
    assert stale == [], f"gen/ is stale, run `make proto`: {stale}"


def test_every_proto_package_is_generated() -> None:
    generated = protogen.generated_files(protogen.GEN_ROOT)
    for service in ("tagging", "audience", "tasks", "journeys"):
        assert any(
            name.startswith(f"memberops/{service}/v1/") and name.endswith("_pb2_grpc.pyi")
            for name in generated
        )
