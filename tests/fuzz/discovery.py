"""Every RPC of every MemberOps service, found in the generated descriptors.

The fuzzer walks these instead of a list of its own, so an RPC added to a .proto is fuzzed the
next time the suite runs, without editing the test.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass

import memberops
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

# Method name prefixes of RPCs that only read: a failed call of any other RPC is checked to have
# written nothing.
READ_PREFIXES = (
    "Get",
    "List",
    "BatchGet",
    "Count",
    "Explain",
    "Read",
    "Stream",
    "Export",
    "Preview",
    "Check",
    "Breakdown",
)


@dataclass(frozen=True)
class Rpc:
    """One method, with what calling it generically needs."""

    method: MethodDescriptor

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def service(self) -> str:
        """The service's package part (tagging, audience, tasks): which server answers it."""
        return self.method.containing_service.full_name.split(".")[1]

    @property
    def path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def writes(self) -> bool:
        return not self.method.name.startswith(READ_PREFIXES)

    @property
    def client_streaming(self) -> bool:
        return bool(self.method.client_streaming)

    @property
    def server_streaming(self) -> bool:
        return bool(self.method.server_streaming)


def services() -> list[ServiceDescriptor]:
    """The services declared in every generated `*_pb2` module under the `memberops` package."""
    found: dict[str, ServiceDescriptor] = {}
    for module in pkgutil.walk_packages(memberops.__path__, prefix="memberops."):
        if not module.name.endswith("_pb2"):
            continue
        descriptor = importlib.import_module(module.name).DESCRIPTOR
        for service in descriptor.services_by_name.values():
            found[service.full_name] = service
    return [found[name] for name in sorted(found)]


def rpcs() -> list[Rpc]:
    return [Rpc(method) for service in services() for method in service.methods]
